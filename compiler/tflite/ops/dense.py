"""Gemm / MatMul with a constant right-hand side → FULLY_CONNECTED (weights stored [out, in]); other
MatMuls are BATCH_MATMUL (ops/arithmetic.py)."""

from __future__ import annotations

import numpy as np
import onnx
import tflite

from compiler.tflite.builder import Options
from compiler.tflite.context import NONE, LoweringContext
from compiler.tflite.ops.arithmetic import batch_matmul
from compiler.tflite.registry import lowering


@lowering("Gemm", since=7)
def gemm_7(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    attrs = ctx.attrs(node)
    if attrs.get("transA", 0):
        raise ctx.fail(node, "transA=1 is not supported")
    weight = ctx.require_constant(node, 1, "B").astype(np.float32) * np.float32(attrs.get("alpha", 1.0))
    weight = weight if attrs.get("transB", 0) else weight.T  # FULLY_CONNECTED wants [out, in]
    units = weight.shape[0]
    bias: np.ndarray | None = None
    if len(node.input) > 2 and node.input[2]:
        c = ctx.require_constant(node, 2, "C").astype(np.float32) * np.float32(attrs.get("beta", 1.0))
        if c.size not in (1, units) or (c.ndim == 2 and c.shape[0] != 1):
            raise ctx.fail(node, f"C of shape {list(c.shape)} is not a per-output bias")
        bias = np.broadcast_to(c.reshape(-1), (units,))
    _fully_connected(ctx, node, weight, bias)


@lowering("MatMul", since=1)
def matmul_1(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    weight = ctx.constant(node.input[1])
    if weight is None or weight.ndim != 2 or ctx.constant(node.input[0]) is not None:
        batch_matmul(ctx, node)
        return
    _fully_connected(ctx, node, weight.astype(np.float32).T, None)


def _fully_connected(ctx: LoweringContext, node: onnx.NodeProto, weight: np.ndarray, bias: np.ndarray | None) -> None:
    rank = len(ctx.shape(node.input[0]))
    if rank < 2:
        raise ctx.fail(node, "the input must have rank ≥ 2")
    x = ctx.tensor(node.input[0], nhwc=False)
    y = ctx.define(node, ctx.output_shape(node), nhwc=False)
    w = ctx.float32(f"{node.input[1]}_fc", weight)
    # -1 is the schema's "no bias"; a following Add may still fill it in (see elementwise.add_7).
    b = ctx.float32(f"{node.output[0]}_bias", bias) if bias is not None else -1
    options = {"FusedActivationFunction": NONE, "KeepNumDims": rank > 2}
    ctx.emit(tflite.BuiltinOperator.FULLY_CONNECTED, [x, w, b], [y], Options("FullyConnectedOptions", options))
