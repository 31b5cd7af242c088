"""ONNX explicit pads → TFLite's SAME/VALID, with a PAD op for what neither expresses."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import tflite

from compiler.tflite.context import LoweringContext, nhwc_shape


@dataclass(frozen=True)
class Window:
    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    pads: tuple[int, ...]  # ONNX order: top, left, bottom, right


def window(ctx: LoweringContext, node: onnx.NodeProto, attrs: dict[str, Any], kernel: tuple[int, ...]) -> Window:
    """The node's 2-D window with ``auto_pad`` resolved to explicit pads."""
    strides = tuple(attrs.get("strides", (1, 1)))
    dilations = tuple(attrs.get("dilations", (1, 1)))
    if len(kernel) != 2 or len(strides) != 2 or len(dilations) != 2:
        raise ctx.fail(node, "only 2-D windows (NCHW inputs) are supported")
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    in_hw = ctx.shape(node.input[0])[2:]
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        same = [_same(in_hw[i], kernel[i], strides[i], dilations[i]) for i in range(2)]
        if auto_pad == "SAME_LOWER":  # ONNX puts the odd pixel first, TFLite last
            same = [(after, before) for before, after in same]
        pads = (same[0][0], same[1][0], same[0][1], same[1][1])
    elif auto_pad == "VALID":
        pads = (0, 0, 0, 0)
    else:
        pads = tuple(attrs.get("pads", (0, 0, 0, 0)))
    return Window(kernel, strides, dilations, pads)


def is_same(ctx: LoweringContext, node: onnx.NodeProto, win: Window) -> bool:
    """Whether TFLite's SAME padding puts exactly ``win.pads`` around the input."""
    in_hw = ctx.shape(node.input[0])[2:]
    same = [_same(in_hw[i], win.kernel[i], win.strides[i], win.dilations[i]) for i in range(2)]
    return win.pads == (same[0][0], same[1][0], same[0][1], same[1][1])


def pad(ctx: LoweringContext, name: str, x: int, pads: tuple[int, ...], value: float | None = None) -> int:
    """An explicit PAD (zeros) or PADV2 (``value``) around NHWC tensor ``x`` of ONNX value ``name``."""
    top, left, bottom, right = pads
    n, c, h, w = ctx.shape(name)
    padded = (n, c, h + top + bottom, w + left + right)
    out = ctx.new_tensor(f"{name}_padded", padded, nhwc=True, like=name)
    paddings = ctx.int32([[0, 0], [top, bottom], [left, right], [0, 0]])
    if value is None:
        ctx.emit(tflite.BuiltinOperator.PAD, [x, paddings], [out])
    else:
        fill = ctx.float32(f"{name}_pad_value", np.asarray(value, dtype=np.float32))
        ctx.emit(tflite.BuiltinOperator.PADV2, [x, paddings, fill], [out])
    assert nhwc_shape(padded) == ctx.builder.tensors[out].shape
    return out


def _same(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    effective = (kernel - 1) * dilation + 1
    total = max((math.ceil(size / stride) - 1) * stride + effective - size, 0)
    return total // 2, total - total // 2
