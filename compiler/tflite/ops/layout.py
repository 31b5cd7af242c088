"""Ops that move data without arithmetic: Concat, Split, Slice, Transpose, Squeeze, Unsqueeze, Pad.

Concat, Split, Slice and Pad keep an NHWC input channels-last and remap their axis (NCHW axis 0, 1, 2, 3 is
NHWC position 0, 3, 1, 2). Transpose of an NHWC tensor folds the layout change into its own
permutation. Squeeze / Unsqueeze are a RESHAPE in ONNX element order.
"""

from __future__ import annotations

import numpy as np
import onnx
import tflite

from compiler.tflite.builder import Options
from compiler.tflite.context import NONE, TO_NCHW, TO_NHWC, LoweringContext, nhwc_axis, normalize_axis
from compiler.tflite.ops.shape import reshape
from compiler.tflite.registry import lowering

_OP = tflite.BuiltinOperator


@lowering("Concat", since=4)
def concat_4(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    shape = ctx.output_shape(node)
    axis = normalize_axis(ctx.attrs(node)["axis"], len(shape))
    activations = [name for name in node.input if ctx.constant(name) is None]
    nhwc = len(shape) == 4 and bool(activations) and all(ctx.is_nhwc(name) for name in activations)
    inputs = [ctx.tensor(name, nhwc=nhwc) for name in node.input]
    y = ctx.define(node, shape, nhwc=nhwc)
    options = {"Axis": nhwc_axis(axis) if nhwc else axis, "FusedActivationFunction": NONE}
    ctx.emit(_OP.CONCATENATION, inputs, [y], Options("ConcatenationOptions", options))


@lowering("Transpose", since=1)
def transpose_1(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    rank = len(ctx.shape(node.input[0]))
    perm = list(ctx.attrs(node).get("perm", range(rank - 1, -1, -1)))
    nhwc = ctx.is_nhwc(node.input[0])
    x = ctx.tensor(node.input[0], nhwc=nhwc)
    if nhwc:  # x_nchw = x_nhwc.transpose(TO_NCHW), so one transpose does both
        perm = [TO_NCHW[p] for p in perm]
    y = ctx.define(node, ctx.output_shape(node), nhwc=False)
    ctx.emit(_OP.TRANSPOSE, [x, ctx.int32(perm)], [y])


@lowering("Squeeze", since=1)
def squeeze_1(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    _squeeze(ctx, node, ctx.attrs(node).get("axes"))


@lowering("Squeeze", since=13)
def squeeze_13(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    axes = ctx.optional_constant_list(node, 1, "axes")
    _squeeze(ctx, node, axes)


@lowering("Unsqueeze", since=1)
def unsqueeze_1(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    _unsqueeze(ctx, node, ctx.attrs(node)["axes"])


@lowering("Unsqueeze", since=13)
def unsqueeze_13(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    _unsqueeze(ctx, node, ctx.require_constant(node, 1, "axes").tolist())


@lowering("Pad", since=11)
def pad_11(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    mode = ctx.attrs(node).get("mode", b"constant")
    if (mode.decode() if isinstance(mode, bytes) else mode) != "constant":
        raise ctx.fail(node, f"mode={mode!r} is not supported; only constant padding is")
    if len(node.input) > 3 and node.input[3]:
        raise ctx.fail(node, "the axes input is not supported")
    pads = ctx.require_constant(node, 1, "pads").astype(np.int64).tolist()
    value = 0.0
    if len(node.input) > 2 and node.input[2]:
        value = float(ctx.require_constant(node, 2, "constant_value"))
    rank = len(ctx.shape(node.input[0]))
    if any(p < 0 for p in pads):
        raise ctx.fail(node, f"negative pads {pads} (cropping) are not supported")
    paddings = [[pads[i], pads[i + rank]] for i in range(rank)]
    nhwc = ctx.is_nhwc(node.input[0])
    if nhwc:
        paddings = [paddings[a] for a in TO_NHWC]
    x = ctx.tensor(node.input[0], nhwc=nhwc)
    y = ctx.define(node, ctx.output_shape(node), nhwc=nhwc)
    if value == 0.0:
        ctx.emit(_OP.PAD, [x, ctx.int32(paddings)], [y])
    else:
        fill = ctx.float32(f"{node.output[0]}_value", np.asarray(value, dtype=np.float32))
        ctx.emit(_OP.PADV2, [x, ctx.int32(paddings), fill], [y])


@lowering("Split", since=2)
def split_2(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    _split(ctx, node)


@lowering("Split", since=13)
def split_13(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    if len(node.input) > 1 and node.input[1]:
        ctx.require_constant(node, 1, "split")  # the sizes come from shape inference
    _split(ctx, node)


@lowering("Slice", since=10)
def slice_10(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    shape = ctx.shape(node.input[0])
    rank = len(shape)
    starts, ends = (ctx.require_constant(node, i, what).tolist() for i, what in ((1, "starts"), (2, "ends")))
    axes = ctx.optional_constant_list(node, 3, "axes")
    steps = ctx.optional_constant_list(node, 4, "steps")
    begin, end, stride = [0] * rank, [0] * rank, [1] * rank
    begin_mask = end_mask = 0
    sliced = set()
    for i, axis in enumerate(axes if axes is not None else range(len(starts))):
        axis = normalize_axis(axis, rank)
        step = steps[i] if steps is not None else 1
        if axis == 0 and node.input[0] in ctx.dynamic_batch:
            raise ctx.fail(node, "slicing a dynamic batch axis is not supported")
        # Python's slice clamps exactly like ONNX; its stop is -1 for "before index 0" when stepping back.
        begin[axis], stop, stride[axis] = slice(starts[i], ends[i], step).indices(shape[axis])
        end[axis] = stop
        if stop < 0:
            end_mask |= 1 << axis
        sliced.add(axis)
    for axis in set(range(rank)) - sliced:
        begin_mask |= 1 << axis
        end_mask |= 1 << axis
    if 0 in ctx.output_shape(node):
        # LiteRT's STRIDED_SLICE does not return an empty tensor for begin == end (it gave the whole axis).
        raise ctx.fail(node, f"the slice is empty (output shape {list(ctx.output_shape(node))})")
    nhwc = ctx.is_nhwc(node.input[0])
    if nhwc:
        begin, end, stride = ([v[a] for a in TO_NHWC] for v in (begin, end, stride))
        begin_mask, end_mask = (_permute_mask(m) for m in (begin_mask, end_mask))
    x = ctx.tensor(node.input[0], nhwc=nhwc)
    y = ctx.define(node, ctx.output_shape(node), nhwc=nhwc)
    options: dict[str, int | float | bool] = {"BeginMask": begin_mask, "EndMask": end_mask}
    inputs = [x, ctx.int32(begin), ctx.int32(end), ctx.int32(stride)]
    ctx.emit(_OP.STRIDED_SLICE, inputs, [y], Options("StridedSliceOptions", options))


def _permute_mask(mask: int) -> int:
    """An NCHW per-axis bit mask as the mask of the same axes in an NHWC tensor."""
    return sum(1 << i for i, axis in enumerate(TO_NHWC) if mask >> axis & 1)


def _split(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    rank = len(ctx.shape(node.input[0]))
    axis = normalize_axis(ctx.attrs(node).get("axis", 0), rank)
    if axis == 0 and node.input[0] in ctx.dynamic_batch:
        raise ctx.fail(node, "splitting a dynamic batch axis is not supported")
    shapes = [ctx.output_shape(node, i) for i in range(len(node.output))]
    nhwc = ctx.is_nhwc(node.input[0])
    x = ctx.tensor(node.input[0], nhwc=nhwc)
    outputs = [ctx.define(node, shape, nhwc=nhwc, index=i) for i, shape in enumerate(shapes)]
    stored_axis = nhwc_axis(axis) if nhwc else axis
    sizes = ctx.int32([shape[axis] for shape in shapes])
    inputs = [x, sizes, ctx.int32(stored_axis)]
    ctx.emit(_OP.SPLIT_V, inputs, outputs, Options("SplitVOptions", {"NumSplits": len(outputs)}))


def _squeeze(ctx: LoweringContext, node: onnx.NodeProto, axes: list[int] | None) -> None:
    shape = ctx.shape(node.input[0])
    axes = [i for i, d in enumerate(shape) if d == 1] if axes is None else [normalize_axis(a, len(shape)) for a in axes]
    if 0 in axes and node.input[0] in ctx.dynamic_batch:
        raise ctx.fail(node, "squeezing a dynamic batch axis is not supported")
    target = list(ctx.output_shape(node))
    if node.input[0] in ctx.dynamic_batch:
        target[0] = -1
    reshape(ctx, node, target)


def _unsqueeze(ctx: LoweringContext, node: onnx.NodeProto, axes: list[int]) -> None:
    target = list(ctx.output_shape(node))
    axes = [normalize_axis(a, len(target)) for a in axes]
    if node.input[0] in ctx.dynamic_batch:
        target[next(i for i in range(len(target)) if i not in axes)] = -1
    reshape(ctx, node, target)
