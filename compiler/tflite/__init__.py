"""TFLite backend: writes ``.tflite`` flatbuffers directly from an ONNX graph (no TensorFlow).

    from compiler.tflite import lower_to_tflite
    Path("model.tflite").write_bytes(lower_to_tflite(onnx.load("model.onnx")))
    Path("model.int8.tflite").write_bytes(lower_to_tflite(onnx.load("model.qdq.onnx"), precision="int8"))

See README.md for the pipeline and the layout rules.
"""

from __future__ import annotations

from compiler.tflite.errors import TfliteLoweringError
from compiler.tflite.int8 import IO_TYPES
from compiler.tflite.lower import PRECISIONS, lower_to_tflite
from compiler.tflite.registry import supported_ops

SUPPORTED_OPS: tuple[str, ...] = supported_ops()

__all__ = ["IO_TYPES", "PRECISIONS", "SUPPORTED_OPS", "TfliteLoweringError", "lower_to_tflite"]
