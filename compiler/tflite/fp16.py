"""The fp16 pass, as the TFLite converter's float16 mode does it: float constants are stored as
float16 and a DEQUANTIZE turns each back into float32 before its first reader; activations and
arithmetic stay float32, so every runtime (LiteRT, tflite-runtime 2.14, XNNPACK) can run it.

    weight (fp32 buffer) ─► CONV_2D          becomes    weight (fp16 buffer) ─► DEQUANTIZE ─► CONV_2D
"""

from __future__ import annotations

import numpy as np
import tflite

from compiler.tflite.builder import TfliteBuilder

_FP16_MAX = float(np.finfo(np.float16).max)


def fp16_weights(builder: TfliteBuilder) -> None:
    """Store every float32 constant an operator reads as float16 behind a DEQUANTIZE (in place).

    Constants beyond float16's range (such as the lowest-float fill of a padded MAX_POOL) stay
    float32: in float16 they would become infinities.
    """
    readers = {t for op in builder.operators for t in op.inputs if t >= 0}
    front = []
    views: dict[int, int] = {}
    for tensor in sorted(readers):
        t = builder.tensors[tensor]
        if not builder.is_constant(tensor) or t.dtype != np.float32:
            continue
        data = builder.constant_data(tensor)
        if data.size and float(np.abs(data).max()) > _FP16_MAX:
            continue
        view = builder.add_tensor(t.name, t.shape, np.float32)
        t.name += "_fp16"
        builder.replace_constant(tensor, data.astype(np.float16))
        front.append(builder.make_operator(tflite.BuiltinOperator.DEQUANTIZE, [tensor], [view]))
        views[tensor] = view
    for op in builder.operators:
        op.inputs = [views.get(t, t) for t in op.inputs]
    builder.operators = [*front, *builder.operators]
