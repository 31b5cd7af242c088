"""Elementwise ops: they keep whatever layout their inputs have, and fuse where TFLite can."""

from __future__ import annotations

import numpy as np
import onnx
import tflite

from compiler.tflite.builder import Options
from compiler.tflite.context import NONE, LoweringContext
from compiler.tflite.registry import lowering

_OP = tflite.BuiltinOperator


@lowering("Add", since=7)
def add_7(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    if not _fold_bias(ctx, node):
        _binary(ctx, node, _OP.ADD, "AddOptions")


@lowering("Mul", since=7)
def mul_7(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    _binary(ctx, node, _OP.MUL, "MulOptions")


@lowering("Relu", since=1)
def relu_1(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    producer = ctx.fusable_producer(node.input[0])
    if producer is None or producer.options is None:
        _unary(ctx, node, _OP.RELU)
        return
    producer.options.fields["FusedActivationFunction"] = tflite.ActivationFunctionType.RELU
    _rename(ctx, node.output[0], node.input[0])


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
        raise ctx.fail(node, f"softmax over axis {axis} of a rank-{rank} tensor; only the last axis is supported")
    x = ctx.tensor(node.input[0], nhwc=nhwc)
    y = ctx.define(node, ctx.output_shape(node), nhwc=nhwc)
    ctx.emit(_OP.SOFTMAX, [x], [y], Options("SoftmaxOptions", {"Beta": 1.0}))


def _unary(ctx: LoweringContext, node: onnx.NodeProto, opcode: int) -> None:
    nhwc = ctx.is_nhwc(node.input[0])
    x = ctx.tensor(node.input[0], nhwc=nhwc)
    y = ctx.define(node, ctx.shape(node.input[0]), nhwc=nhwc)
    ctx.emit(opcode, [x], [y])


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
    _rename(ctx, node.output[0], x)
    return True


def _rename(ctx: LoweringContext, dst: str, src: str) -> None:
    """``dst`` takes over ``src``'s tensor, which now holds ``dst``'s value (a fused op)."""
    ctx.alias(dst, src)
    value = ctx.values[dst]
    ctx.builder.tensors[value.tensor].name = dst + ("_nhwc" if value.nhwc else "")
