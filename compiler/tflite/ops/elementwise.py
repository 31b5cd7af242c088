"""Elementwise ops and activations: they keep whatever layout their inputs have, and fuse where TFLite can.

Clip(0, 6), Clip(-1, 1) and Relu become RELU6 / RELU_N1_TO_1 / RELU, fused into a preceding
CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED, ADD or MUL when nothing else reads its output.
"""

from __future__ import annotations

import numpy as np
import onnx
import tflite

from compiler.tflite.builder import Options
from compiler.tflite.context import NONE, LoweringContext
from compiler.tflite.registry import lowering

_OP = tflite.BuiltinOperator
_ACT = tflite.ActivationFunctionType
_LOWEST = float(np.finfo(np.float32).min)
_HIGHEST = float(np.finfo(np.float32).max)


@lowering("Add", since=7)
def add_7(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    if not _fold_bias(ctx, node):
        _binary(ctx, node, _OP.ADD, "AddOptions")


@lowering("Mul", since=7)
def mul_7(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    _binary(ctx, node, _OP.MUL, "MulOptions")


@lowering("Sub", since=7)
def sub_7(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    _binary(ctx, node, _OP.SUB, "SubOptions")


@lowering("Div", since=7)
def div_7(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    _binary(ctx, node, _OP.DIV, "DivOptions")


@lowering("Relu", since=1)
def relu_1(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    _activation(ctx, node, _OP.RELU, _ACT.RELU)


@lowering("Clip", since=6)
def clip_6(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    attrs = ctx.attrs(node)
    _clip(ctx, node, attrs.get("min", _LOWEST), attrs.get("max", _HIGHEST))


@lowering("Clip", since=11)
def clip_11(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    bounds = [_LOWEST, _HIGHEST]
    for i in (1, 2):
        if len(node.input) > i and node.input[i]:
            bounds[i - 1] = float(ctx.require_constant(node, i, ("min", "max")[i - 1]))
    _clip(ctx, node, *bounds)


@lowering("LeakyRelu", since=6)
def leaky_relu_6(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    alpha = float(ctx.attrs(node).get("alpha", 0.01))
    _unary(ctx, node, _OP.LEAKY_RELU, Options("LeakyReluOptions", {"Alpha": alpha}))


@lowering("HardSwish", since=14)
def hard_swish_14(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    # ONNX's x·max(0, min(1, x/6 + 1/2)) is TFLite's x·relu6(x + 3)/6.
    _unary(ctx, node, _OP.HARD_SWISH)


@lowering("HardSigmoid", since=6)
def hard_sigmoid_6(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    # max(0, min(1, alpha·x + beta)): MUL, ADD with a fused RELU, MINIMUM with 1.
    attrs = ctx.attrs(node)
    nhwc = ctx.is_nhwc(node.input[0])
    shape = ctx.shape(node.input[0])
    x = ctx.tensor(node.input[0], nhwc=nhwc)
    name = node.output[0]
    scaled = ctx.new_tensor(f"{name}_scaled", shape, nhwc=nhwc, like=node.input[0])
    shifted = ctx.new_tensor(f"{name}_shifted", shape, nhwc=nhwc, like=node.input[0])
    alpha = ctx.float32(f"{name}_alpha", np.float32(attrs.get("alpha", 0.2)))
    beta = ctx.float32(f"{name}_beta", np.float32(attrs.get("beta", 0.5)))
    ctx.emit(_OP.MUL, [x, alpha], [scaled], Options("MulOptions", {"FusedActivationFunction": NONE}))
    ctx.emit(_OP.ADD, [scaled, beta], [shifted], Options("AddOptions", {"FusedActivationFunction": _ACT.RELU}))
    y = ctx.define(node, shape, nhwc=nhwc)
    ctx.emit(_OP.MINIMUM, [shifted, ctx.float32(f"{name}_one", np.float32(1.0))], [y])


def _clip(ctx: LoweringContext, node: onnx.NodeProto, low: float, high: float) -> None:
    fused = {(0.0, 6.0): (_OP.RELU6, _ACT.RELU6), (-1.0, 1.0): (_OP.RELU_N1_TO_1, _ACT.RELU_N1_TO_1),
             (0.0, _HIGHEST): (_OP.RELU, _ACT.RELU)}
    if (low, high) in fused:
        _activation(ctx, node, *fused[(low, high)])
        return
    nhwc = ctx.is_nhwc(node.input[0])
    shape = ctx.shape(node.input[0])
    x = ctx.tensor(node.input[0], nhwc=nhwc)
    steps = [(op, bound) for op, bound, unbounded in ((_OP.MAXIMUM, low, _LOWEST), (_OP.MINIMUM, high, _HIGHEST))
             if bound != unbounded]
    if not steps:
        ctx.alias(node.output[0], node.input[0])
        return
    for i, (opcode, bound) in enumerate(steps):
        last = i == len(steps) - 1
        out = ctx.define(node, shape, nhwc=nhwc) if last else (
            ctx.new_tensor(f"{node.output[0]}_low", shape, nhwc=nhwc, like=node.input[0]))
        ctx.emit(opcode, [x, ctx.float32(f"{node.output[0]}_bound{i}", np.float32(bound))], [out])
        x = out


def _activation(ctx: LoweringContext, node: onnx.NodeProto, opcode: int, fused: int) -> None:
    """An activation fused into the operator before it when it can be, else its own operator."""
    producer = ctx.fusable_producer(node.input[0])
    if producer is None or producer.options is None:
        _unary(ctx, node, opcode)
        return
    producer.options.fields["FusedActivationFunction"] = fused
    ctx.rename(node.output[0], node.input[0])


@lowering("Sigmoid", since=1)
def sigmoid_1(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    _unary(ctx, node, _OP.LOGISTIC)


@lowering("Tanh", since=1)
def tanh_1(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    _unary(ctx, node, _OP.TANH)


@lowering("Softmax", since=1)
def softmax_1(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    # Before opset 13 Softmax flattens from ``axis`` (default 1); that equals TFLite's
    # last-axis softmax only when ``axis`` is the last axis.
    _softmax(ctx, node, ctx.attrs(node).get("axis", 1), channels_ok=False)


@lowering("Softmax", since=13)
def softmax_13(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    _softmax(ctx, node, ctx.attrs(node).get("axis", -1), channels_ok=True)


def _softmax(ctx: LoweringContext, node: onnx.NodeProto, axis: int, *, channels_ok: bool) -> None:
    rank = len(ctx.shape(node.input[0]))
    axis = axis + rank if axis < 0 else axis
    # A softmax over channels of an NHWC tensor is a last-axis softmax: no transpose needed.
    nhwc = channels_ok and axis == 1 and ctx.is_nhwc(node.input[0])
    if not nhwc and axis != rank - 1:
        if not channels_ok:
            raise ctx.fail(node, f"softmax over axis {axis} of a rank-{rank} tensor; only the last axis is supported")
        _softmax_middle_axis(ctx, node, axis)
        return
    x = ctx.tensor(node.input[0], nhwc=nhwc)
    y = ctx.define(node, ctx.output_shape(node), nhwc=nhwc)
    ctx.emit(_OP.SOFTMAX, [x], [y], Options("SoftmaxOptions", {"Beta": 1.0}))


def _softmax_middle_axis(ctx: LoweringContext, node: onnx.NodeProto, axis: int) -> None:
    """TRANSPOSE ``axis`` last, SOFTMAX, TRANSPOSE back (the swap is its own inverse)."""
    shape = ctx.shape(node.input[0])
    perm = list(range(len(shape)))
    perm[axis], perm[-1] = perm[-1], perm[axis]
    swapped = tuple(shape[p] for p in perm)
    x = ctx.tensor(node.input[0], nhwc=False)
    name = node.output[0]
    moved = ctx.new_tensor(f"{name}_axis_last", swapped, nhwc=False, like=node.input[0])
    ctx.emit(_OP.TRANSPOSE, [x, ctx.int32(perm)], [moved])
    soft = ctx.new_tensor(f"{name}_softmax", swapped, nhwc=False, like=node.input[0])
    ctx.builder.tensors[soft].source = name  # the node's value, axes swapped: int8 reads its parameters
    ctx.emit(_OP.SOFTMAX, [moved], [soft], Options("SoftmaxOptions", {"Beta": 1.0}))
    y = ctx.define(node, ctx.output_shape(node), nhwc=False)
    ctx.emit(_OP.TRANSPOSE, [soft, ctx.int32(perm)], [y])


def _unary(ctx: LoweringContext, node: onnx.NodeProto, opcode: int, options: Options | None = None) -> None:
    nhwc = ctx.is_nhwc(node.input[0])
    x = ctx.tensor(node.input[0], nhwc=nhwc)
    y = ctx.define(node, ctx.shape(node.input[0]), nhwc=nhwc)
    ctx.emit(opcode, [x], [y], options)


def _binary(ctx: LoweringContext, node: onnx.NodeProto, opcode: int, table: str) -> None:
    activations = [name for name in node.input if ctx.constant(name) is None]
    if not activations:
        raise ctx.fail(node, "both inputs are constants; fold them before lowering")
    shape = ctx.output_shape(node)
    # Stay channels-last only if every activation already is; constants are permuted to match.
    nhwc = len(shape) == 4 and all(ctx.is_nhwc(name) for name in activations)
    if nhwc and any(ctx.shape(name) and len(ctx.shape(name)) > 4 for name in node.input):
        nhwc = False
    inputs = [ctx.tensor(name, nhwc=nhwc) for name in node.input]
    y = ctx.define(node, shape, nhwc=nhwc)
    ctx.emit(opcode, inputs, [y], Options(table, {"FusedActivationFunction": NONE}))


def _fold_bias(ctx: LoweringContext, node: onnx.NodeProto) -> bool:
    """MatMul + Add(constant per-output vector) → one FULLY_CONNECTED with a bias."""
    a, b = node.input
    x, c = (a, ctx.constant(b)) if ctx.constant(a) is None else (b, ctx.constant(a))
    if c is None or ctx.constant(x) is not None:
        return False
    producer = ctx.fusable_producer(x)
    if producer is None or producer.opcode != _OP.FULLY_CONNECTED or producer.inputs[2] != -1:
        return False
    units = ctx.shape(x)[-1]
    if c.size != units or c.shape[-1] != units or ctx.output_shape(node) != ctx.shape(x):
        return False
    producer.inputs[2] = ctx.float32(f"{node.output[0]}_bias", np.asarray(c, dtype=np.float32).reshape(units))
    ctx.rename(node.output[0], x)
    return True
