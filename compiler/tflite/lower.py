"""The driver: shape-infer the ONNX graph, run each node's lowering, serialize the subgraph."""

from __future__ import annotations

import onnx

import compiler.tflite.ops  # noqa: F401  (registers the lowerings)
from compiler.tflite.context import LoweringContext
from compiler.tflite.errors import TfliteLoweringError
from compiler.tflite.fold import fold_constants
from compiler.tflite.optimize import optimize
from compiler.tflite.registry import resolve


def lower_to_tflite(model: onnx.ModelProto) -> bytes:
    """Lower an fp32 ONNX model to the bytes of a ``.tflite`` flatbuffer.

        data = lower_to_tflite(onnx.load("digits_cnn.onnx"))
        Interpreter(model_content=data)

    Inputs and outputs keep their ONNX names, shapes and (NCHW) layout.
    """
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None:
        raise TfliteLoweringError("the model imports no default-domain opset; is it an ONNX model?")
    model = fold_constants(model)
    try:
        model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError) as exc:
        raise TfliteLoweringError(f"ONNX shape inference failed before lowering: {exc}") from exc
    graph = model.graph
    ctx = LoweringContext(graph, opset)
    initializers = {t.name for t in graph.initializer}
    inputs = []
    for info in graph.input:
        if info.name in initializers:
            continue
        if info.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
            raise TfliteLoweringError(f"input '{info.name}' is not float32; this backend lowers fp32 models only")
        if not ctx.has_shape(info.name):
            raise TfliteLoweringError(f"input '{info.name}' needs a static shape (only the batch may be dynamic)")
        inputs.append(ctx.add_input(info.name, ctx.shape(info.name)))
    for node in graph.node:
        resolve(node, opset)(ctx, node)
    outputs = [_output(ctx, info.name) for info in graph.output]
    optimize(ctx.builder, inputs, outputs)
    return ctx.builder.serialize(inputs, outputs)


def _output(ctx: LoweringContext, name: str) -> int:
    if name not in ctx.values:
        raise TfliteLoweringError(f"output '{name}' is a constant; this backend needs it computed")
    tensor = ctx.tensor(name, nhwc=False)
    ctx.builder.tensors[tensor].name = name
    return tensor
