"""MaxPool / AveragePool → MAX_POOL_2D / AVERAGE_POOL_2D; GlobalAveragePool → MEAN, all NHWC."""

from __future__ import annotations

import math

import numpy as np
import onnx
import tflite

from compiler.tflite.builder import Options
from compiler.tflite.context import NONE, LoweringContext
from compiler.tflite.ops.padding import Window, is_same, pad, window
from compiler.tflite.registry import lowering

_LOWEST = float(np.finfo(np.float32).min)


@lowering("MaxPool", since=1)
def max_pool_1(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    if len(node.output) > 1 and node.output[1]:
        raise ctx.fail(node, "the Indices output is not supported")
    win = _window(ctx, node)
    x = ctx.tensor(node.input[0], nhwc=True)
    same = is_same(ctx, node, win)
    if any(win.pads) and not same:
        # Padding must never win the max, so pad with the lowest float rather than zero.
        x = pad(ctx, node.input[0], x, win.pads, value=_LOWEST)
    _pool(ctx, node, tflite.BuiltinOperator.MAX_POOL_2D, x, win, same and any(win.pads))


@lowering("AveragePool", since=1)
def average_pool_1(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    win = _window(ctx, node)
    x = ctx.tensor(node.input[0], nhwc=True)
    same = is_same(ctx, node, win)
    include_pad = ctx.attrs(node).get("count_include_pad", 0)
    if any(win.pads) and (include_pad or not same):
        if not include_pad:
            # TFLite only excludes padding from the average with SAME; other pads would be counted.
            raise ctx.fail(node, f"pads {list(win.pads)} with count_include_pad=0 are not TFLite SAME padding")
        x = pad(ctx, node.input[0], x, win.pads)
        same = False
    _pool(ctx, node, tflite.BuiltinOperator.AVERAGE_POOL_2D, x, win, same and any(win.pads))


@lowering("GlobalAveragePool", since=1)
def global_average_pool_1(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    shape = ctx.shape(node.input[0])
    if len(shape) != 4:
        raise ctx.fail(node, f"only rank-4 (NCHW) inputs are supported, got rank {len(shape)}")
    nhwc = ctx.is_nhwc(node.input[0])
    x = ctx.tensor(node.input[0], nhwc=nhwc)
    y = ctx.define(node, ctx.output_shape(node), nhwc=nhwc)
    axes = ctx.int32([1, 2] if nhwc else [2, 3])
    ctx.emit(tflite.BuiltinOperator.MEAN, [x, axes], [y], Options("ReducerOptions", {"KeepDims": True}))


def _window(ctx: LoweringContext, node: onnx.NodeProto) -> Window:
    attrs = ctx.attrs(node)
    win = window(ctx, node, attrs, tuple(attrs["kernel_shape"]))
    if win.dilations != (1, 1):
        raise ctx.fail(node, f"dilated pooling (dilations={list(win.dilations)}) is not supported")
    if attrs.get("storage_order", 0):
        raise ctx.fail(node, "storage_order=1 is not supported")
    if attrs.get("ceil_mode", 0):
        in_hw = ctx.shape(node.input[0])[2:]
        for i in range(2):
            span = in_hw[i] + win.pads[i] + win.pads[i + 2] - win.kernel[i]
            if math.ceil(span / win.strides[i]) != span // win.strides[i]:
                raise ctx.fail(node, "ceil_mode=1 changes the output size here; TFLite pools round down")
    return win


def _pool(ctx: LoweringContext, node: onnx.NodeProto, opcode: int, x: int, win: Window, same: bool) -> None:
    y = ctx.define(node, ctx.output_shape(node), nhwc=True)
    options = {
        "Padding": tflite.Padding.SAME if same else tflite.Padding.VALID,
        "StrideH": win.strides[0],
        "StrideW": win.strides[1],
        "FilterHeight": win.kernel[0],
        "FilterWidth": win.kernel[1],
        "FusedActivationFunction": NONE,
    }
    ctx.emit(opcode, [x], [y], Options("Pool2DOptions", options))
