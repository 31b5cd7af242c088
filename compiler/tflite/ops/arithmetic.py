"""Pow, Sqrt and MatMul of two activations: the arithmetic a transformer block decomposes into.

Pow by a constant 2 is a MUL of x by itself (exact, and XNNPACK runs it), by 0.5 a SQRT, else POW.
MatMul with an activation (or a constant of rank > 2) on the right is BATCH_MATMUL, which
broadcasts batch dims like numpy's matmul.
"""

from __future__ import annotations

import numpy as np
import onnx
import tflite

from compiler.tflite.builder import Options
from compiler.tflite.context import NONE, LoweringContext
from compiler.tflite.registry import lowering

_OP = tflite.BuiltinOperator


@lowering("Sqrt", since=6)
def sqrt_6(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    _elementwise(ctx, node, _OP.SQRT, [])


@lowering("Pow", since=7)
def pow_7(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    exponent = ctx.constant(node.input[1])
    if exponent is not None and exponent.size == 1 and float(exponent) == 2.0:
        _elementwise(ctx, node, _OP.MUL, [node.input[0]], Options("MulOptions", {"FusedActivationFunction": NONE}))
    elif exponent is not None and exponent.size == 1 and float(exponent) == 0.5:
        _elementwise(ctx, node, _OP.SQRT, [])
    else:
        _elementwise(ctx, node, _OP.POW, [node.input[1]])


def batch_matmul(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    """MatMul → BATCH_MATMUL on ONNX-layout tensors (called by dense.matmul_1)."""
    a, b = (ctx.shape(name) for name in node.input)
    if len(a) < 2 or len(b) < 2:
        raise ctx.fail(node, "1-D MatMul operands are not supported")
    x, y = (ctx.tensor(name, nhwc=False) for name in node.input)
    out = ctx.define(node, ctx.output_shape(node), nhwc=False)
    options = Options("BatchMatMulOptions", {"AdjX": False, "AdjY": False})
    ctx.emit(_OP.BATCH_MATMUL, [x, y], [out], options)


def _elementwise(
    ctx: LoweringContext, node: onnx.NodeProto, opcode: int, others: list[str], options: Options | None = None
) -> None:
    """``opcode`` of input 0 and ``others``, in input 0's layout (constants are permuted to match)."""
    name = node.input[0]
    nhwc = ctx.is_nhwc(name) and all(ctx.constant(o) is not None or ctx.is_nhwc(o) for o in others)
    if nhwc and any(len(ctx.shape(o)) > 4 for o in others):
        nhwc = False
    inputs = [ctx.tensor(name, nhwc=nhwc), *(_operand(ctx, o, nhwc) for o in others)]
    y = ctx.define(node, ctx.output_shape(node), nhwc=nhwc)
    ctx.emit(opcode, inputs, [y], options)


def _operand(ctx: LoweringContext, name: str, nhwc: bool) -> int:
    value = ctx.constant(name)
    if value is not None and value.dtype != np.float32:
        ctx.constants[name] = value.astype(np.float32)
    return ctx.tensor(name, nhwc=nhwc)
