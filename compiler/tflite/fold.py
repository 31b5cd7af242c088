"""Constant folding before lowering: shape subgraphs (Shape → Gather → Concat → Reshape) become initializers.

Exporters compute reshape targets, resize sizes and anchor grids at run time from ``Shape``; once the
image size is fixed those values are constants. A node is folded when every input is a constant, or
when it is ``Shape``/``Size`` of a tensor whose shape inference gave a static shape. Each folded node
is evaluated by onnx's reference implementation (``onnx.reference``), so the arithmetic is onnx's,
not ours. Quantize/Dequantize nodes stay (the int8 lowering reads them), as do random ops and ops
from other domains.

If a ``Shape`` is still left because the batch is dynamic, the batch is fixed to 1 and the graph
folded again: the TFLite model then has a static batch of 1 (LiteRT runs it sample by sample).

    model = fold_constants(model)   # same outputs, fewer nodes
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

# Nodes never folded: quantization is lowered as such, random ops are not constants.
_KEEP = {
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear",
    "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial", "Bernoulli",
}
_SHAPE_OPS = {"Shape", "Size"}
# Folding a node whose output is bigger than this would bloat the file (e.g. an Expand of a constant).
_MAX_FOLDED_ELEMENTS = 1 << 20


@dataclass(frozen=True)
class Folded:
    """One node evaluated away: its input and output values (by ONNX name)."""

    node: onnx.NodeProto
    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]


def fold_constants(model: onnx.ModelProto, record: list[Folded] | None = None) -> onnx.ModelProto:
    """``model`` with its constant subgraphs replaced by initializers (a new ModelProto); ``record``
    receives the folded nodes in evaluation order (the int8 pass follows weights through them)."""
    log: list[Folded] = []
    model = _symbolic_negative_dims(model)
    folded = _fold_to_fixed_point(model, log)
    if _has_shape_ops(folded):
        static = onnx.ModelProto()
        static.CopyFrom(model)
        if _fix_dynamic_batch(static):
            log.clear()
            folded = _fold_to_fixed_point(static, log)
    if record is not None:
        record.extend(log)
    return folded


def _fold_to_fixed_point(model: onnx.ModelProto, log: list[Folded]) -> onnx.ModelProto:
    """Fold, re-infer shapes, fold again: a Reshape whose target was folded gives its output a shape
    that the next Shape node downstream can be folded from."""
    folded = _fold(model, log)
    while len(folded.graph.node) < len(model.graph.node):
        model, folded = folded, _fold(folded, log)
    return folded


def _fold(source: onnx.ModelProto, log: list[Folded]) -> onnx.ModelProto:
    model = onnx.ModelProto()
    model.CopyFrom(source)
    # Folding works without shapes too; only the Shape nodes then stay.
    with contextlib.suppress(onnx.shape_inference.InferenceError, onnx.checker.ValidationError):
        model = onnx.shape_inference.infer_shapes(model, data_prop=True)
    graph = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    shapes = _static_shapes(graph)
    kept: list[onnx.NodeProto] = []
    for node in graph.node:
        values = _evaluate(node, constants, shapes, opset)
        if values is None:
            kept.append(node)
        else:
            log.append(Folded(node, {n: constants[n] for n in node.input if n in constants}, values))
            constants.update(values)
    needed = {name for node in kept for name in node.input} | {o.name for o in graph.output}
    old = {t.name for t in graph.initializer}
    new_inits = [numpy_helper.from_array(np.asarray(constants[n]), n) for n in constants if n in needed - old]
    used_old = [t for t in graph.initializer if t.name in needed]
    del graph.node[:]
    graph.node.extend(kept)
    del graph.initializer[:]
    graph.initializer.extend([*used_old, *new_inits])
    del graph.value_info[:]
    return model


def _evaluate(
    node: onnx.NodeProto, constants: dict[str, np.ndarray], shapes: dict[str, tuple[int | None, ...]], opset: int
) -> dict[str, np.ndarray] | None:
    """The node's outputs if it can be folded, else None."""
    if node.domain not in ("", "ai.onnx") or node.op_type in _KEEP:
        return None
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
        return None
    if node.op_type in _SHAPE_OPS and node.input[0] not in constants:
        value = _shape_value(node, shapes.get(node.input[0]))
        return None if value is None else {node.output[0]: value}
    if not all(name in constants for name in node.input if name):
        return None
    inputs = {name: constants[name] for name in node.input if name}
    try:
        outputs = _run(node, inputs, opset)
    except Exception:  # a node onnx.reference cannot run is simply not folded
        return None
    if any(np.asarray(v).size > _MAX_FOLDED_ELEMENTS for v in outputs):
        return None
    return {name: np.asarray(v) for name, v in zip(node.output, outputs, strict=False) if name}


def _run(node: onnx.NodeProto, inputs: dict[str, np.ndarray], opset: int) -> list[np.ndarray]:
    graph = helper.make_graph(
        [node], "fold",
        [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
         for n, v in inputs.items()],
        [helper.make_empty_tensor_value_info(n) for n in node.output if n],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    return list(ReferenceEvaluator(model).run(None, inputs))


def _shape_value(node: onnx.NodeProto, shape: tuple[int | None, ...] | None) -> np.ndarray | None:
    """Shape / Size of a tensor of ``shape`` (None for an unknown dim), if the asked dims are known."""
    if shape is None:
        return None
    if node.op_type == "Size":
        known = [d for d in shape if d is not None]
        return None if len(known) < len(shape) else np.asarray(math.prod(known), dtype=np.int64)
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    dims = shape[attrs.get("start", 0):attrs.get("end", len(shape))]
    return None if None in dims else np.asarray(dims, dtype=np.int64)


def _static_shapes(graph: onnx.GraphProto) -> dict[str, tuple[int | None, ...]]:
    shapes = {}
    for info in [*graph.input, *graph.value_info, *graph.output]:
        tensor = info.type.tensor_type
        if info.type.HasField("tensor_type") and tensor.HasField("shape"):
            shapes[info.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim)
    return shapes


def _symbolic_negative_dims(source: onnx.ModelProto) -> onnx.ModelProto:
    """Paddle's exporter writes a dynamic dim as ``dim_value: -1``; make it the symbolic dim it means."""
    infos = [*source.graph.input, *source.graph.output, *source.graph.value_info]
    if not any(d.HasField("dim_value") and d.dim_value < 0 for i in infos for d in i.type.tensor_type.shape.dim):
        return source
    model = onnx.ModelProto()
    model.CopyFrom(source)
    for info in [*model.graph.input, *model.graph.output, *model.graph.value_info]:
        for axis, dim in enumerate(info.type.tensor_type.shape.dim):
            if dim.HasField("dim_value") and dim.dim_value < 0:
                dim.dim_param = f"{info.name}_dim{axis}"
    return model


def _has_shape_ops(model: onnx.ModelProto) -> bool:
    return any(node.op_type in _SHAPE_OPS for node in model.graph.node)


def _fix_dynamic_batch(model: onnx.ModelProto) -> bool:
    """Set a symbolic batch (axis 0 of each graph input) to 1, in place; whether one was."""
    initializers = {t.name for t in model.graph.initializer}
    fixed = False
    for info in model.graph.input:
        dims = info.type.tensor_type.shape.dim
        if info.name not in initializers and dims and not dims[0].HasField("dim_value"):
            dims[0].dim_value = 1
            fixed = True
    if fixed:
        del model.graph.value_info[:]
        for info in model.graph.output:  # re-inferred with the batch fixed
            if info.type.tensor_type.shape.dim and not info.type.tensor_type.shape.dim[0].HasField("dim_value"):
                info.type.tensor_type.shape.dim[0].dim_value = 1
    return fixed
