"""The driver: shape-infer the ONNX graph, run each node's lowering, serialize the subgraph."""

from __future__ import annotations

import onnx
import tflite

import compiler.tflite.ops  # noqa: F401  (registers the lowerings)
from compiler.tflite.context import LoweringContext
from compiler.tflite.errors import TfliteLoweringError
from compiler.tflite.fold import Folded, fold_constants
from compiler.tflite.fp16 import fp16_weights
from compiler.tflite.int8 import IO_TYPES, quantize_builder
from compiler.tflite.optimize import optimize
from compiler.tflite.qdq import carry_weights, is_qdq, strip_qdq
from compiler.tflite.registry import resolve

PRECISIONS = ("fp32", "fp16", "int8")


def lower_to_tflite(model: onnx.ModelProto, *, precision: str = "fp32", io: str = "float") -> bytes:
    """Lower an ONNX model to the bytes of a ``.tflite`` flatbuffer.

        data = lower_to_tflite(onnx.load("digits_cnn.onnx"))
        data = lower_to_tflite(onnx.load("digits_cnn.int8.onnx"), precision="int8")  # the QDQ graph
        Interpreter(model_content=data)

    ``fp32`` and ``fp16`` (float16 weights, float32 compute) lower a float graph; ``int8`` lowers
    onnxruntime's calibrated QDQ graph with its scales and zero points. ``io`` is the type of an
    int8 model's inputs and outputs: ``float`` (QUANTIZE / DEQUANTIZE inside) or ``int8``.
    Inputs and outputs keep their ONNX names, shapes and (NCHW) layout.
    """
    if precision not in PRECISIONS:
        raise TfliteLoweringError(f"precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if io not in IO_TYPES:
        raise TfliteLoweringError(f"io {io!r}: choose one of {', '.join(IO_TYPES)}")
    qdq = is_qdq(model)
    if precision == "int8" and not qdq:
        raise TfliteLoweringError("int8 lowers a calibrated QDQ graph (QuantizeLinear/DequantizeLinear); got none")
    if precision != "int8" and qdq:
        raise TfliteLoweringError(f"{precision} lowers a float graph; this one has QuantizeLinear/DequantizeLinear")
    plan = None
    if qdq:
        model, plan = strip_qdq(model)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None:
        raise TfliteLoweringError("the model imports no default-domain opset; is it an ONNX model?")
    folded: list[Folded] = []
    model = fold_constants(model, folded)
    if plan is not None:
        carry_weights(plan, folded)
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
        ctx.node = _key(node)
        resolve(node, opset)(ctx, node)
    ctx.node = None
    outputs: list[int] = []
    for info in graph.output:
        outputs.append(_output(ctx, info.name, [*inputs, *outputs]))
    # On the float operators, before int8: the rules keep each tensor's ONNX value (Tensor.source),
    # so the int8 pass still finds onnxruntime's parameters for what they moved.
    optimize(ctx.builder, inputs, outputs)
    if plan is not None:
        nodes = {_key(node): node for node in graph.node}
        inputs, outputs = quantize_builder(ctx.builder, plan, nodes, inputs, outputs, io)
    elif precision == "fp16":
        fp16_weights(ctx.builder)
    if precision != "fp32":
        inputs, outputs = ctx.builder.prune(inputs, outputs)
    return ctx.builder.serialize(inputs, outputs)


def _key(node: onnx.NodeProto) -> str:
    return node.name or node.output[0]


def _output(ctx: LoweringContext, name: str, taken: list[int]) -> int:
    if name not in ctx.values:
        raise TfliteLoweringError(f"output '{name}' is a constant; this backend needs it computed")
    tensor = ctx.tensor(name, nhwc=False)
    if tensor in taken:
        # input → Identity → output (or one value behind two outputs): a tensor that is both would leave
        # the int8 pass nowhere to put the edge QUANTIZE / DEQUANTIZE; a RESHAPE to the same shape copies it.
        shape = ctx.values[name].shape
        copy = ctx.new_tensor(name, shape, nhwc=False, like=name)
        ctx.builder.tensors[copy].source = name
        target = ctx.builder.tensors[copy].signature or shape
        ctx.emit(tflite.BuiltinOperator.RESHAPE, [tensor, ctx.int32(list(target))], [copy])
        tensor = copy
    ctx.builder.tensors[tensor].name = name
    return tensor
