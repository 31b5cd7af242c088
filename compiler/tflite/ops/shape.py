"""Flatten / Reshape, and the ops that vanish: Identity, Dropout (inference), Constant.

Flatten order: ONNX flattens NCHW memory order. A channels-last tensor is transposed back to
NCHW before the RESHAPE, so the next layer sees exactly ONNX's element order whatever it is
(Gemm, MatMul, Add, an output). Permuting the next FC's weights instead would save one
TRANSPOSE but only applies when an FC follows; that is a later graph rewrite. When H = W = 1
(after a global pool) NHWC and NCHW orders coincide and no transpose is emitted.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import tflite

from compiler.tflite.context import LoweringContext
from compiler.tflite.registry import lowering


@lowering("Flatten", since=1)
def flatten_1(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    shape = ctx.shape(node.input[0])
    axis = ctx.attrs(node).get("axis", 1)
    axis = axis + len(shape) if axis < 0 else axis
    target = [math.prod(shape[:axis]), math.prod(shape[axis:])]
    if node.input[0] in ctx.dynamic_batch and axis > 0:
        target[0] = -1
    reshape(ctx, node, target)


@lowering("Reshape", since=5)
def reshape_5(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    requested = ctx.require_constant(node, 1, "the shape").astype(np.int64).tolist()
    if ctx.attrs(node).get("allowzero", 0) and 0 in requested:
        raise ctx.fail(node, "allowzero=1 with a zero in the shape is not supported")
    shape = ctx.shape(node.input[0])
    dynamic = node.input[0] in ctx.dynamic_batch
    # TFLite has no "copy this dim" 0: resolve it, keeping a dynamic batch as -1.
    target = [(-1 if dynamic and i == 0 else shape[i]) if d == 0 else d for i, d in enumerate(requested)]
    if target.count(-1) > 1:
        raise ctx.fail(node, f"shape {requested} leaves more than one dimension unknown with a dynamic batch")
    reshape(ctx, node, target)


@lowering("Identity", since=1)
def identity_1(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    ctx.alias(node.output[0], node.input[0])


@lowering("Dropout", since=1)
def dropout_1(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    mask = node.output[1] if len(node.output) > 1 else ""
    if mask and (ctx.consumers[mask] or mask in ctx.graph_outputs):
        raise ctx.fail(node, "the mask output is used; only inference-mode Dropout is supported")
    training = ctx.constant(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    if training is not None and bool(training):
        raise ctx.fail(node, "training_mode=True is not supported")
    ctx.alias(node.output[0], node.input[0])


@lowering("Constant", since=1)
def constant_1(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    (attr,) = node.attribute
    if attr.name == "sparse_value":
        raise ctx.fail(node, "sparse constants are not supported")
    ctx.constants[node.output[0]] = np.asarray(onnx.helper.get_attribute_value(attr)) if attr.name != "value" else (
        onnx.numpy_helper.to_array(attr.t)
    )


def reshape(ctx: LoweringContext, node: onnx.NodeProto, target: list[int]) -> None:
    name = node.input[0]
    shape = ctx.shape(name)
    # NHWC with a 1×1 spatial extent has the same element order as NCHW.
    nhwc = ctx.is_nhwc(name) and shape[2] == shape[3] == 1
    x = ctx.tensor(name, nhwc=nhwc)
    y = ctx.define(node, ctx.output_shape(node), nhwc=False)
    ctx.emit(tflite.BuiltinOperator.RESHAPE, [x, ctx.int32(target)], [y])
