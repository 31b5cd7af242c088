"""Conv → CONV_2D (OHWI weights, grouped when group > 1) or, when every group is one input channel,
DEPTHWISE_CONV_2D ([1, H, W, C_in·multiplier] weights); both on NHWC activations."""

from __future__ import annotations

import numpy as np
import onnx
import tflite

from compiler.tflite.builder import Options
from compiler.tflite.context import NONE, LoweringContext
from compiler.tflite.ops.padding import is_same, pad, window
from compiler.tflite.registry import lowering


@lowering("Conv", since=1)
def conv_1(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    attrs = ctx.attrs(node)
    weight = ctx.require_constant(node, 1, "the weight").astype(np.float32)
    if weight.ndim != 4:
        raise ctx.fail(node, f"only 2-D convolutions are supported, the weight has rank {weight.ndim}")
    group = attrs.get("group", 1)
    in_channels = ctx.shape(node.input[0])[1]
    # Other groups stay CONV_2D: its filter is [O, H, W, C_in / group] and LiteRT derives the group
    # count from the channel ratio (optimized, reference and XNNPACK kernels all agree, measured).
    depthwise = group > 1 and group == in_channels and weight.shape[1] == 1
    out_channels = weight.shape[0]
    bias = ctx.constant(node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros(out_channels)
    if bias is None:
        raise ctx.fail(node, "the bias (input 2) must be a constant initializer")
    win = window(ctx, node, attrs, tuple(attrs.get("kernel_shape", weight.shape[2:])))
    x = ctx.tensor(node.input[0], nhwc=True)
    same = is_same(ctx, node, win)
    if any(win.pads) and not same:
        x = pad(ctx, node.input[0], x, win.pads)
    y = ctx.define(node, ctx.output_shape(node), nhwc=True)
    b = ctx.float32(f"{node.output[0]}_bias", np.asarray(bias, dtype=np.float32).reshape(out_channels))
    options: dict[str, int | float | bool] = {
        "Padding": tflite.Padding.SAME if same and any(win.pads) else tflite.Padding.VALID,
        "StrideH": win.strides[0],
        "StrideW": win.strides[1],
        "DilationHFactor": win.dilations[0],
        "DilationWFactor": win.dilations[1],
        "FusedActivationFunction": NONE,
    }
    if depthwise:
        # ONNX output channel g·multiplier + m is TFLite's depthwise channel c·multiplier + m.
        w = ctx.float32(f"{node.input[1]}_1hwo", weight.transpose(1, 2, 3, 0))
        options["DepthMultiplier"] = out_channels // group
        opcode, table = tflite.BuiltinOperator.DEPTHWISE_CONV_2D, "DepthwiseConv2DOptions"
    else:
        w = ctx.float32(f"{node.input[1]}_ohwi", weight.transpose(0, 2, 3, 1))
        opcode, table = tflite.BuiltinOperator.CONV_2D, "Conv2DOptions"
    ctx.emit(opcode, [x, w, b], [y], Options(table, options))
