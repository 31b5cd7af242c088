"""ReduceMean → MEAN, on whichever layout the input is stored in (axes remapped for NHWC)."""

from __future__ import annotations

import onnx
import tflite

from compiler.tflite.builder import Options
from compiler.tflite.context import TO_NHWC, LoweringContext, nhwc_axis, normalize_axis
from compiler.tflite.registry import lowering


@lowering("ReduceMean", since=1)
def reduce_mean_1(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    _mean(ctx, node, ctx.attrs(node).get("axes"))


@lowering("ReduceMean", since=18)
def reduce_mean_18(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    axes = ctx.optional_constant_list(node, 1, "axes")
    if not axes and ctx.attrs(node).get("noop_with_empty_axes", 0):
        ctx.alias(node.output[0], node.input[0])
        return
    _mean(ctx, node, axes)


def _mean(ctx: LoweringContext, node: onnx.NodeProto, requested: list[int] | None) -> None:
    rank = len(ctx.shape(node.input[0]))
    axes = sorted(normalize_axis(a, rank) for a in (requested or range(rank)))
    keep = bool(ctx.attrs(node).get("keepdims", 1))
    nhwc = ctx.is_nhwc(node.input[0])
    if nhwc and not keep:
        # Dropping axes of an NHWC tensor leaves ONNX's order only if the kept axes stay sorted.
        kept = [a for a in TO_NHWC if a not in axes]
        nhwc = kept == sorted(kept)
        out_nhwc = False
    else:
        out_nhwc = nhwc
    x = ctx.tensor(node.input[0], nhwc=nhwc)
    stored = sorted(nhwc_axis(a) for a in axes) if nhwc else axes
    y = ctx.define(node, ctx.output_shape(node), nhwc=out_nhwc)
    ctx.emit(tflite.BuiltinOperator.MEAN, [x, ctx.int32(stored)], [y], Options("ReducerOptions", {"KeepDims": keep}))
