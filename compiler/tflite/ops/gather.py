"""Gather of an activation at constant indices → GATHER (ONNX layout; negative indices resolved).

Gathers of constants are folded before lowering (fold.py); what reaches here reads an activation,
e.g. the ``as_strided`` torch.export writes for an adaptive average pool.
"""

from __future__ import annotations

import numpy as np
import onnx
import tflite

from compiler.tflite.builder import Options
from compiler.tflite.context import LoweringContext, normalize_axis
from compiler.tflite.registry import lowering


@lowering("Gather", since=1)
def gather_1(ctx: LoweringContext, node: onnx.NodeProto) -> None:
    shape = ctx.shape(node.input[0])
    axis = normalize_axis(ctx.attrs(node).get("axis", 0), len(shape))
    if axis == 0 and node.input[0] in ctx.dynamic_batch:
        raise ctx.fail(node, "gathering along a dynamic batch axis is not supported")
    indices = ctx.require_constant(node, 1, "indices").astype(np.int64)
    indices = np.where(indices < 0, indices + shape[axis], indices).astype(np.int32)
    x = ctx.tensor(node.input[0], nhwc=False)
    y = ctx.define(node, ctx.output_shape(node), nhwc=False)
    index_tensor = ctx.builder.add_constant(f"{node.output[0]}_indices", indices)
    ctx.emit(tflite.BuiltinOperator.GATHER, [x, index_tensor], [y], Options("GatherOptions", {"Axis": axis}))
