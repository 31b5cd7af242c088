"""int8 parameters for tensors the QDQ graph leaves in float, where they follow exactly from a neighbour's.

onnxruntime quantizes the values its quantizer has rules for; a value between two ops it leaves in
float (HardSigmoid, ReduceMean, Div, the MUL/ADD a lowering splits one ONNX op into) has no
QuantizeLinear, and without parameters its operator would be a DEQUANTIZE → float op → QUANTIZE
island. These rules give such a tensor parameters only where no value changes (or the one rounding
is the one onnxruntime does at the next QuantizeLinear); they run to a fixed point before the int8 pass:

    t ─► SAME_PARAMS op ─► y(s, zp)     t (read by that op only) takes (s, zp): the op moves values
    t ─► ALL_SAME op ─► y(s, zp)        t (read by that op only) takes (s, zp): the op requires it
    x(s, zp) ─► MUL by c > 0 ─► t       t takes (c·s, zp): the same integers, relabelled
    MINIMUM(r ≥ 0, c) ─► t              t takes (c/255, −128) when nothing else gives it: [0, c]
    x(s, zp) ─► HARD_SWISH ─► t          t takes the parameters of hardswish over x's int8 range

The last two are for outputs with no QuantizeLinear (a graph output, a reader left in float):
HardSigmoid's clip gets 255 steps over [0, c], which hold both ends exactly (the spec's LOGISTIC
uses 1/256, which cannot hold 1.0); HARD_SWISH gets onnxruntime's asymmetric rule applied to
the range its input's int8 values map to, so a hardswish whose output is not quantized still runs
int8 (one rounding, at a step no coarser than the input's).

    derive_params(builder, params, outputs)   # params (tensor → Quantization) filled in place
"""

from __future__ import annotations

import numpy as np
import tflite

from compiler.tflite.builder import Operator, Quantization, TfliteBuilder

_OP = tflite.BuiltinOperator
_ACT = tflite.ActivationFunctionType


def uniform_constant(builder: TfliteBuilder, tensor: int) -> float | None:
    """The value of a float32 constant whose elements are all equal, else None."""
    if tensor < 0 or not builder.is_constant(tensor) or builder.tensors[tensor].dtype != np.float32:
        return None
    data = builder.constant_data(tensor)
    if data.size == 0 or not np.all(data == data.flat[0]):
        return None
    return float(data.flat[0])


def derive_params(
    builder: TfliteBuilder, params: dict[int, Quantization], outputs: list[int], same_params: frozenset[int],
    all_same: frozenset[int],
) -> None:
    readers: dict[int, list[Operator]] = {}
    for op in builder.operators:
        for t in set(op.inputs):
            readers.setdefault(t, []).append(op)
    producers = {t: op for op in builder.operators for t in op.outputs}
    edges = set(outputs)

    def unquantized(tensor: int) -> bool:
        t = builder.tensors[tensor]
        return tensor >= 0 and tensor not in params and not builder.is_constant(tensor) and t.dtype == np.float32

    def only_reader(tensor: int, op: Operator) -> bool:
        return tensor not in edges and [id(r) for r in readers.get(tensor, [])] == [id(op)]

    changed = True
    while changed:
        changed = False
        for op in builder.operators:
            out = op.outputs[0] if op.outputs else -1
            if out in params and (op.opcode in same_params or op.opcode in all_same):
                sources = op.inputs[:1] if op.opcode in same_params else op.inputs
                for t in sources:
                    if unquantized(t) and only_reader(t, op):
                        params[t] = params[out]
                        changed = True
            elif out >= 0 and unquantized(out):
                q = _forward(builder, op, params, producers)
                if q is not None:
                    params[out] = q
                    changed = True


def _forward(
    builder: TfliteBuilder, op: Operator, params: dict[int, Quantization], producers: dict[int, Operator]
) -> Quantization | None:
    if op.opcode == _OP.MUL and not _fused(op) and len(op.inputs) == 2:
        for x, c in (op.inputs, op.inputs[::-1]):
            value = uniform_constant(builder, c)
            if x in params and value is not None and value > 0 and len(params[x].scale) == 1:
                q = params[x]
                return Quantization((float(np.float32(q.scale[0] * value)),), q.zero_point)
    if op.opcode == _OP.HARD_SWISH and op.inputs[0] in params:
        return _hard_swish_range(params[op.inputs[0]])
    if op.opcode == _OP.MINIMUM and len(op.inputs) == 2:
        x, c = op.inputs
        value = uniform_constant(builder, c)
        source = producers.get(x)
        if value is not None and value > 0 and source is not None and _non_negative(source):
            return Quantization((float(np.float32(value / 255)),), (-128,))
    return None


def _hard_swish_range(q: Quantization) -> Quantization:
    """onnxruntime's asymmetric int8 parameters for x·relu6(x + 3)/6 over the input's int8 range
    (its minimum −3/8 is at x = −3/2), with 0 in the range as onnxruntime keeps it."""
    scale, zero_point = q.scale[0], q.zero_point[0]
    ends = [scale * (-128 - zero_point), scale * (127 - zero_point)]
    points = [*ends, *([-1.5] if ends[0] < -1.5 < ends[1] else [])]
    values = [v * min(max(v + 3, 0), 6) / 6 for v in points]
    low, high = min(0.0, *values), max(0.0, *values)
    step = (high - low) / 255 or 1.0
    return Quantization((float(np.float32(step)),), (int(np.clip(round(-128 - low / step), -128, 127)),))


def _fused(op: Operator) -> bool:
    return op.options is not None and op.options.fields.get("FusedActivationFunction", _ACT.NONE) != _ACT.NONE


def _non_negative(op: Operator) -> bool:
    if op.opcode in (_OP.RELU, _OP.RELU6, _OP.RELU_0_TO_1):
        return True
    return op.options is not None and op.options.fields.get("FusedActivationFunction") in (_ACT.RELU, _ACT.RELU6)
