"""Read a calibrated QDQ graph (onnxruntime's quantize_static output) into a float graph plus the
int8 parameters of its values, so the fp32 lowerings run unchanged and the int8 pass
(``int8.py``) attaches onnxruntime's own scales and zero points to the TFLite tensors.

    DQ(int8/int32 initializer) ─► float initializer (q - zp)·s, and its WeightParams kept exactly
    x ─► Q(s, zp) ─► DQ(s, zp) ─► y ─►  x (one value; y renamed to x, or x to y if y is an output)
                                        with ActivationParams(s, zp)

    >>> float_model, plan = strip_qdq(onnx.load("int8-s8s8-pc.onnx"))
    >>> plan.activations["relu"]
    ActivationParams(scale=0.0123, zero_point=-128)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from compiler.tflite.errors import TfliteLoweringError
from compiler.tflite.fold import Folded

_Q, _DQ = "QuantizeLinear", "DequantizeLinear"
# Ops that only move a constant's elements: its integers and scales move with them.
_DATA_MOVERS = {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity"}


@dataclass(frozen=True)
class ActivationParams:
    """Per-tensor int8 parameters of an activation: real = scale · (q - zero_point)."""

    scale: float
    zero_point: int


@dataclass(frozen=True)
class WeightParams:
    """A constant as the QDQ graph stores it: integer data, scale(s), zero point(s) along ``axis``."""

    data: np.ndarray  # int8 weights or int32 biases, exactly as in the initializer
    scale: np.ndarray  # shape () per tensor, (C,) per channel
    zero_point: np.ndarray
    axis: int | None  # None when per tensor


@dataclass
class QuantPlan:
    """What the QDQ graph said about each value of the stripped float graph."""

    activations: dict[str, ActivationParams] = field(default_factory=dict)
    weights: dict[str, WeightParams] = field(default_factory=dict)


def is_qdq(model: onnx.ModelProto) -> bool:
    return any(node.op_type in (_Q, _DQ) for node in model.graph.node)


def strip_qdq(model: onnx.ModelProto) -> tuple[onnx.ModelProto, QuantPlan]:
    """The float graph onnxruntime simulates (no Q/DQ nodes) and the parameters they carried."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    plan = QuantPlan()
    rename: dict[str, str] = {}  # DQ output → the float value it stands for
    folded: list[onnx.TensorProto] = []
    producers = {out: node for node in graph.node for out in node.output}
    outputs = {o.name for o in graph.output}
    drop: list[onnx.NodeProto] = []
    for node in graph.node:
        if node.op_type not in (_Q, _DQ):
            continue
        _check_domain(node)
        scale, zero_point, axis = _params(node, inits)
        if node.op_type == _DQ and node.input[0] in inits:
            data = numpy_helper.to_array(inits[node.input[0]])
            axis = axis % data.ndim if axis is not None else None
            plan.weights[node.output[0]] = WeightParams(data, scale, zero_point, axis)
            folded.append(numpy_helper.from_array(_dequantize(data, scale, zero_point, axis), node.output[0]))
        elif node.op_type == _DQ:
            q = producers.get(node.input[0])
            if q is None or q.op_type != _Q:
                raise TfliteLoweringError(
                    f"DequantizeLinear '{node.name}' reads '{node.input[0]}', which no QuantizeLinear makes; "
                    "only onnxruntime's QDQ pattern (Q → DQ around each quantized value) is supported"
                )
            q_scale, q_zero_point, _ = _params(q, inits)
            if not (np.array_equal(q_scale, scale) and np.array_equal(q_zero_point, zero_point)):
                raise TfliteLoweringError(f"DequantizeLinear '{node.name}' uses other parameters than its Q")
            rename[node.output[0]] = q.input[0]
        else:
            if axis is not None or scale.size != 1:
                raise TfliteLoweringError(f"QuantizeLinear '{node.name}': activations must be quantized per tensor")
            if zero_point.dtype != np.int8:
                raise TfliteLoweringError(
                    f"QuantizeLinear '{node.name}' makes {zero_point.dtype}; the TFLite int8 path needs int8 "
                    "activations (the s8s8 scheme)"
                )
            if node.output[0] in outputs:
                raise TfliteLoweringError(f"graph output '{node.output[0]}' is quantized; expected a DQ after it")
            params = ActivationParams(float(scale), int(zero_point))
            known = plan.activations.setdefault(node.input[0], params)
            if known != params:
                raise TfliteLoweringError(f"'{node.input[0]}' is quantized twice with different parameters")
        drop.append(node)
    for node in drop:
        graph.node.remove(node)
    _rename_values(graph, rename, plan, outputs)
    used = {name for node in graph.node for name in node.input}
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend([*keep, *(t for t in folded if t.name in used)])
    del graph.value_info[:]
    return model, plan


def carry_weights(plan: QuantPlan, folded: list[Folded]) -> None:
    """Follow weights through the data movers constant folding evaluated away.

    onnxruntime quantizes an initializer that reaches a Conv/MatMul through a Reshape or Transpose
    as DQ(int8 W) → Reshape → Q → DQ → Conv with one set of parameters, so once folded the conv's
    weight is the moved int8 data exactly. Without this the folded weight has no WeightParams and
    the conv runs in float. Per-channel scales stay with their axis as it moves; a Q after the move
    with other parameters (a requantized weight) is not followed.
    """
    for step in folded:
        node = step.node
        source = node.input[0] if node.input else ""
        w = plan.weights.get(source)
        if node.op_type not in _DATA_MOVERS or w is None or not node.output:
            continue
        out = node.output[0]
        moved = plan.activations.get(out)
        same = ActivationParams(float(w.scale.reshape(-1)[0]), int(w.zero_point.reshape(-1)[0]))
        if moved is not None and (w.axis is not None or moved != same):
            continue
        shape = step.outputs[out].shape
        if node.op_type == "Transpose":
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            perm = list(attrs.get("perm", range(w.data.ndim - 1, -1, -1)))
            data = w.data.transpose(perm)
            axis = perm.index(w.axis) if w.axis is not None else None
        else:
            data = w.data.reshape(shape)
            axis = _reshaped_axis(w.axis, w.data.shape, shape) if w.axis is not None else None
            if w.axis is not None and axis is None:
                continue
        plan.weights[out] = WeightParams(data, w.scale, w.zero_point, axis)


def _reshaped_axis(axis: int, before: tuple[int, ...], after: tuple[int, ...]) -> int | None:
    """Where ``axis`` of ``before`` is after a reshape, if that dim survives whole, else None."""
    lead = int(np.prod(before[:axis]))
    for i, size in enumerate(after):
        if size == before[axis] and int(np.prod(after[:i])) == lead:
            return i
    return None


def _rename_values(graph: onnx.GraphProto, rename: dict[str, str], plan: QuantPlan, outputs: set[str]) -> None:
    """Point readers of each DQ output at the quantized float value; a graph output keeps its name."""
    # x → y where the DQ output y is a graph output: the value keeps the output's name.
    keep_output = {x: y for y, x in rename.items() if y in outputs}
    canonical = {y: keep_output.get(x, x) for y, x in rename.items()} | keep_output
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in canonical:
                node.input[i] = canonical[name]
        for i, name in enumerate(node.output):
            if name in keep_output:
                node.output[i] = keep_output[name]
    for info in graph.input:
        if info.name in keep_output:
            raise TfliteLoweringError(f"graph input '{info.name}' goes straight to an output through Q/DQ")
    for x, y in keep_output.items():
        if x in plan.activations:
            plan.activations[y] = plan.activations.pop(x)


def _check_domain(node: onnx.NodeProto) -> None:
    if node.domain not in ("", "ai.onnx"):
        raise TfliteLoweringError(f"{node.domain}.{node.op_type} '{node.name}' is not supported (use QDQ opset nodes)")


def _params(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> tuple[np.ndarray, np.ndarray, int | None]:
    def constant(index: int) -> np.ndarray:
        if index >= len(node.input) or node.input[index] not in inits:
            raise TfliteLoweringError(f"{node.op_type} '{node.name}': input {index} must be a constant initializer")
        return numpy_helper.to_array(inits[node.input[index]])

    scale = constant(1).astype(np.float32)
    zero_point = constant(2) if len(node.input) > 2 and node.input[2] else np.zeros_like(scale, dtype=np.uint8)
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if attrs.get("block_size", 0):
        raise TfliteLoweringError(f"{node.op_type} '{node.name}': blocked quantization has no TFLite equivalent")
    return scale, zero_point, (int(attrs.get("axis", 1)) if scale.ndim == 1 and scale.size > 1 else None)


def _dequantize(data: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, axis: int | None) -> np.ndarray:
    """(q - zp)·s in float32, the same arithmetic onnxruntime's DequantizeLinear does."""
    if axis is not None:
        shape = [1] * data.ndim
        shape[axis] = -1
        scale, zero_point = scale.reshape(shape), zero_point.reshape(shape)
    diff = data.astype(np.int64) - zero_point.astype(np.int64)
    return (diff.astype(np.float32) * scale.astype(np.float32)).astype(np.float32)
