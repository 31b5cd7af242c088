"""The int8 and fp16 forms of a conformance case, built the way the compiler builds its artifacts.

    int8: onnxruntime's quantize_static (QDQ, the ARM scheme: s8 activations, s8 per-channel
          weights) calibrated on the case's input and a few random draws of its shape; both
          runtimes then run that same QDQ graph.
    fp16: the case's graph with every float constant rounded through float16, which is exactly
          what the TFLite fp16 model computes (float16 weights dequantized to float32).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from tests.compiler.tflite.cases import Case

CALIBRATION_DRAWS = 8
_FP16_MAX = float(np.finfo(np.float16).max)


class _Reader:
    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._feeds = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def calibration_feeds(case: Case) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(1234)
    draws = [
        {k: (rng.standard_normal(v.shape) * v.std() + v.mean()).astype(np.float32) for k, v in case.inputs.items()}
        for _ in range(CALIBRATION_DRAWS)
    ]
    return [case.inputs, *draws]


def qdq_model(case: Case) -> onnx.ModelProto:
    """The case's model as onnxruntime's calibrated QDQ graph (the ARM targets' int8 scheme)."""
    import logging

    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from compiler.quantize import _quantizable_op_types
    from compiler.schemes import scheme_for
    from edgectl.targets import load_target

    scheme = scheme_for(load_target("arm64-cortex-a76"))
    # The compiler's op list, plus the case's own op: onnxruntime leaves ops it has no QDQ rule
    # for (Tanh, Sub, HardSwish) in float, and data movers (MaxPool, Transpose) unquantized
    # when their input is not already int8; the case is there to exercise the int8 kernel.
    op_types = sorted(set(_quantizable_op_types()) | {n.op_type for n in case.model.graph.node})
    qtype = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
    logging.getLogger().setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="edgectl-case-") as tmp:
        src, out = Path(tmp) / "case.onnx", Path(tmp) / "case.qdq.onnx"
        onnx.save(case.model, str(src))
        quantize_static(
            str(src), str(out), _Reader(calibration_feeds(case)), quant_format=QuantFormat.QDQ,
            per_channel=scheme.per_channel, reduce_range=scheme.reduce_range,
            activation_type=qtype[scheme.activation], weight_type=qtype[scheme.weight],
            calibrate_method=CalibrationMethod.MinMax, op_types_to_quantize=op_types,
            extra_options={"ForceQuantizeNoInputCheck": True},
        )
        return onnx.load(str(out))


def output_scales(model: onnx.ModelProto) -> dict[str, float | None]:
    """Each graph output's int8 scale (its DequantizeLinear's), None where it stays float."""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    made_by = {out: node for node in model.graph.node for out in node.output}
    scales: dict[str, float | None] = {}
    for info in model.graph.output:
        node = made_by.get(info.name)
        scales[info.name] = float(inits[node.input[1]]) if node is not None and node.op_type == "DequantizeLinear" else None
    return scales


def fp16_rounded(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with its float initializers and Constant values rounded through float16."""
    model = onnx.ModelProto.FromString(model.SerializeToString())

    def rounded(t: onnx.TensorProto) -> onnx.TensorProto:
        data = numpy_helper.to_array(t)
        if data.dtype != np.float32 or (data.size and float(np.abs(data).max()) > _FP16_MAX):
            return t
        return numpy_helper.from_array(data.astype(np.float16).astype(np.float32), t.name)

    inits = [rounded(t) for t in model.graph.initializer]
    del model.graph.initializer[:]
    model.graph.initializer.extend(inits)
    for node in model.graph.node:
        for attr in node.attribute:
            if node.op_type == "Constant" and attr.name == "value":
                attr.t.CopyFrom(rounded(attr.t))
    return model
