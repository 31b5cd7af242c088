"""ConvTranspose → TRANSPOSE_CONV (OHWI weights, bias as the fourth input) on NHWC activations.

TFLite's kernel takes the output size as a tensor and knows no explicit pads, so the lowering asks
for the full VALID output, ``(in - 1)·stride + kernel + output_padding``, and crops ONNX's pads
with a STRIDED_SLICE. Every output pixel then sums the same products as onnxruntime's.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import tflite

from compiler.tflite.builder import Options
from compiler.tflite.context import LoweringContext
from compiler.tflite.registry import lowering

_OP = tflite.BuiltinOperator


@lowering("ConvTranspose", since=1)
def conv_transpose_1(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    attrs = ctx.attrs(node)
    weight = ctx.require_constant(node, 1, "the weight").astype(np.float32)  # [C_in, C_out/group, kH, kW]
    if weight.ndim != 4:
        raise ctx.fail(node, f"only 2-D transposed convolutions are supported, the weight has rank {weight.ndim}")
    if attrs.get("group", 1) != 1:
        raise ctx.fail(node, f"group={attrs['group']} is not supported (TRANSPOSE_CONV has no groups)")
    if tuple(attrs.get("dilations", (1, 1))) != (1, 1):
        raise ctx.fail(node, "dilations are not supported (TRANSPOSE_CONV has none)")
    if node.input[0] in ctx.dynamic_batch:
        raise ctx.fail(node, "a dynamic batch is not supported (TRANSPOSE_CONV takes a constant output shape)")
    n, _, height, width = ctx.shape(node.input[0])
    kernel = weight.shape[2:]
    strides = tuple(attrs.get("strides", (1, 1)))
    extra = tuple(attrs.get("output_padding", (0, 0)))
    full = [(size - 1) * s + k + e for size, s, k, e in zip((height, width), strides, kernel, extra, strict=True)]
    out_shape = ctx.output_shape(node)
    top, left = _leading_pads(attrs, full, out_shape[2:])
    out_channels = weight.shape[1]
    bias = np.zeros(out_channels, np.float32)
    if len(node.input) > 2 and node.input[2]:
        bias = ctx.require_constant(node, 2, "the bias").astype(np.float32).reshape(out_channels)
    x = ctx.tensor(node.input[0], nhwc=True)
    w = ctx.float32(f"{node.input[1]}_ohwi", weight.transpose(1, 2, 3, 0))
    b = ctx.float32(f"{node.output[0]}_bias", bias)
    uncropped = (n, out_channels, *full)
    cropped = tuple(full) != tuple(out_shape[2:])
    y = (ctx.new_tensor(f"{node.output[0]}_uncropped", uncropped, nhwc=True, like=node.input[0]) if cropped
         else ctx.define(node, out_shape, nhwc=True))
    if cropped:  # the crop only drops pixels: int8 gives the full output the node's parameters
        ctx.builder.tensors[y].source = node.output[0]
    sizes = ctx.int32([n, *full, out_channels])
    options = {"Padding": tflite.Padding.VALID, "StrideH": strides[0], "StrideW": strides[1]}
    ctx.emit(_OP.TRANSPOSE_CONV, [sizes, w, x, b], [y], Options("TransposeConvOptions", options))
    if cropped:
        begin = [0, top, left, 0]
        end = [n, top + out_shape[2], left + out_shape[3], out_channels]
        out = ctx.define(node, out_shape, nhwc=True)
        inputs = [y, ctx.int32(begin), ctx.int32(end), ctx.int32([1, 1, 1, 1])]
        ctx.emit(_OP.STRIDED_SLICE, inputs, [out], Options("StridedSliceOptions", {}))


def _leading_pads(attrs: dict[str, Any], full: list[int], out_hw: tuple[int, ...]) -> tuple[int, int]:
    """How many rows and columns ONNX drops at the top and left of the full output."""
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        totals = [f - o for f, o in zip(full, out_hw, strict=True)]
        # SAME_UPPER puts the odd pixel at the end, so fewer are dropped at the start.
        top, left = (t // 2 if auto_pad == "SAME_UPPER" else t - t // 2 for t in totals)
        return top, left
    pads = list(attrs.get("pads", (0, 0, 0, 0)))
    return int(pads[0]), int(pads[1])
