"""TFLite backend: writes ``.tflite`` flatbuffers directly from an ONNX graph (no TensorFlow).

    from compiler.tflite import lower_to_tflite
    Path("model.tflite").write_bytes(lower_to_tflite(onnx.load("model.onnx")))

See README.md for the pipeline and the layout rules.
"""

from __future__ import annotations

from compiler.tflite.errors import TfliteLoweringError
from compiler.tflite.lower import lower_to_tflite
from compiler.tflite.registry import supported_ops

SUPPORTED_OPS: tuple[str, ...] = supported_ops()

__all__ = ["SUPPORTED_OPS", "TfliteLoweringError", "lower_to_tflite"]
