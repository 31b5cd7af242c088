"""Resize of H and W → RESIZE_NEAREST_NEIGHBOR / RESIZE_BILINEAR on NHWC.

TFLite has two flags, ``align_corners`` and ``half_pixel_centers``; each ONNX
coordinate_transformation_mode maps to one pair, and a nearest_mode is accepted only where
TFLite rounds the same way:

    ONNX mode            flags (align, half)   nearest: TFLite picks
    asymmetric           (False, False)        floor(out·scale)               = ONNX floor
    align_corners        (True,  False)        round-half-up(out·(in-1)/(out-1)) = round_prefer_ceil
    half_pixel           (False, True)         floor((out + ½)·scale)          = round_prefer_ceil
    pytorch_half_pixel   (False, True)         linear only, same as half_pixel when every out > 1

With an integer upscale factor half_pixel never hits a tie, so round_prefer_floor agrees too.
"""

from __future__ import annotations

import onnx
import tflite

from compiler.tflite.builder import Options
from compiler.tflite.context import LoweringContext
from compiler.tflite.registry import lowering

_FLAGS = {
    "asymmetric": (False, False),
    "align_corners": (True, False),
    "half_pixel": (False, True),
    "pytorch_half_pixel": (False, True),
}
_NEAREST = {"asymmetric": {"floor"}, "align_corners": {"round_prefer_ceil"}, "half_pixel": {"round_prefer_ceil"}}


@lowering("Resize", since=11)
def resize_11(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    attrs = {k: v.decode() if isinstance(v, bytes) else v for k, v in ctx.attrs(node).items()}
    mode = attrs.get("mode", "nearest")
    transform = attrs.get("coordinate_transformation_mode", "half_pixel")
    in_shape, out_shape = ctx.shape(node.input[0]), ctx.output_shape(node)
    if len(in_shape) != 4 or in_shape[:2] != out_shape[:2]:
        raise ctx.fail(node, f"only H and W of an NCHW tensor can be resized ({list(in_shape)} → {list(out_shape)})")
    if transform not in _FLAGS:
        raise ctx.fail(node, f"coordinate_transformation_mode={transform!r} has no TFLite equivalent")
    align, half = _FLAGS[transform]
    if mode == "nearest":
        nearest = attrs.get("nearest_mode", "round_prefer_floor")
        integer_upscale = all(o % i == 0 for i, o in zip(in_shape[2:], out_shape[2:], strict=True))
        allowed = _NEAREST.get(transform, set()) | ({"round_prefer_floor"} if transform == "half_pixel" and
                                                    integer_upscale else set())
        if nearest not in allowed:
            raise ctx.fail(node, f"nearest_mode={nearest!r} with {transform!r} rounds differently from TFLite")
        opcode, table = tflite.BuiltinOperator.RESIZE_NEAREST_NEIGHBOR, "ResizeNearestNeighborOptions"
    elif mode == "linear":
        if transform == "pytorch_half_pixel" and min(out_shape[2:]) == 1:
            raise ctx.fail(node, "pytorch_half_pixel with an output size of 1 differs from half_pixel")
        opcode, table = tflite.BuiltinOperator.RESIZE_BILINEAR, "ResizeBilinearOptions"
    else:
        raise ctx.fail(node, f"mode={mode!r} is not supported (nearest and linear are)")
    x = ctx.tensor(node.input[0], nhwc=True)
    y = ctx.define(node, out_shape, nhwc=True)
    size = ctx.int32(list(out_shape[2:]))
    ctx.emit(opcode, [x, size], [y], Options(table, {"AlignCorners": align, "HalfPixelCenters": half}))
