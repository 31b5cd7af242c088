"""BatchNormalization (inference): folded into the CONV_2D / DEPTHWISE_CONV_2D before it, else
MUL + ADD with per-channel constants."""

from __future__ import annotations

import numpy as np
import onnx
import tflite

from compiler.tflite.builder import Operator, Options
from compiler.tflite.context import NONE, LoweringContext
from compiler.tflite.registry import lowering

_OP = tflite.BuiltinOperator


@lowering("BatchNormalization", since=9)
def batch_normalization_9(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    if len(node.output) > 1 and any(node.output[1:]):
        raise ctx.fail(node, "the running mean/var outputs are training-mode only")
    if ctx.attrs(node).get("training_mode", 0):
        raise ctx.fail(node, "training_mode=1 is not supported")
    gamma, beta, mean, var = (ctx.require_constant(node, i, what).astype(np.float64)
                              for i, what in enumerate(("scale", "B", "mean", "var"), start=1))
    scale = gamma / np.sqrt(var + ctx.attrs(node).get("epsilon", 1e-5))
    shift = beta - mean * scale
    producer = ctx.fusable_producer(node.input[0])
    if producer is not None and producer.opcode in (_OP.CONV_2D, _OP.DEPTHWISE_CONV_2D):
        _fold_into_conv(ctx, producer, scale, shift)
        ctx.rename(node.output[0], node.input[0])
        return
    _scale_and_shift(ctx, node, scale, shift)


def _fold_into_conv(ctx: LoweringContext, conv: Operator, scale: np.ndarray, shift: np.ndarray) -> None:
    """w' = w·scale per output channel, b' = b·scale + shift: the conv computes the normalized value."""
    builder = ctx.builder
    weight, bias = builder.constant_data(conv.inputs[1]), builder.constant_data(conv.inputs[2])
    # CONV_2D weights are OHWI (output channel first), DEPTHWISE_CONV_2D's are 1HWO (last).
    per_out = scale.reshape(-1, 1, 1, 1) if conv.opcode == _OP.CONV_2D else scale.reshape(1, 1, 1, -1)
    builder.set_constant_data(conv.inputs[1], (weight * per_out).astype(np.float32))
    builder.set_constant_data(conv.inputs[2], (bias * scale + shift).astype(np.float32))


def _scale_and_shift(ctx: LoweringContext, node: onnx.NodeProto, scale: np.ndarray, shift: np.ndarray) -> None:
    shape = ctx.shape(node.input[0])
    if len(shape) < 2:
        raise ctx.fail(node, f"the input must have rank ≥ 2, got rank {len(shape)}")
    nhwc = ctx.is_nhwc(node.input[0])
    # Channels are axis 1 in ONNX; the last axis when stored NHWC.
    per_channel = (-1,) if nhwc else (-1,) + (1,) * (len(shape) - 2)
    x = ctx.tensor(node.input[0], nhwc=nhwc)
    name = node.output[0]
    scaled = ctx.new_tensor(f"{name}_scaled", shape, nhwc=nhwc, like=node.input[0])
    k = ctx.float32(f"{name}_scale", scale.reshape(per_channel))
    ctx.emit(_OP.MUL, [x, k], [scaled], Options("MulOptions", {"FusedActivationFunction": NONE}))
    y = ctx.define(node, shape, nhwc=nhwc)
    b = ctx.float32(f"{name}_shift", shift.reshape(per_channel))
    ctx.emit(_OP.ADD, [scaled, b], [y], Options("AddOptions", {"FusedActivationFunction": NONE}))
