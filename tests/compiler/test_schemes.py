"""The int8 scheme for AVX2 targets is chosen by measurement, under AVX2's own arithmetic.

This host has VNNI, so onnxruntime here never shows the int16 saturation of VPMADDUBSW; the
alternatives are evaluated with compiler.emulate, which recomputes every quantized Conv /
MatMul / Gemm the way MLAS does on AVX2 (its accuracy is checked in test_emulate.py).
"""

import numpy as np
import onnx
import pytest

from compiler import data as ds
from compiler.emulate import emulate
from compiler.prepare import prepare
from compiler.quantize import calibrate, quantize
from compiler.schemes import QuantScheme, scheme_for
from edgectl.targets import load_target

ALTERNATIVES = {
    "u8s8": QuantScheme("uint8", "int8", True, False, reason="alternative"),
    "s8s8": QuantScheme("int8", "int8", True, False, reason="alternative"),
    "u8s8-rr": QuantScheme("uint8", "int8", True, True, reason="alternative"),
    "u8u8": QuantScheme("uint8", "uint8", True, False, reason="alternative"),
}
EVAL_SAMPLES = 200


@pytest.fixture(scope="module")
def measured(digits_cnn, tmp_path_factory) -> dict[str, dict[str, float]]:
    work = tmp_path_factory.mktemp("schemes")
    model = onnx.load(str(digits_cnn.onnx_path))
    specs = ds.input_specs(model)
    _, prepared = prepare(model, work)
    calib = ds.load_tensors(digits_cnn.calibration, specs, what="calibration")
    evals = ds.take(ds.load_tensors(digits_cnn.eval, specs, what="eval"), slice(0, EVAL_SAMPLES))
    ranges = calibrate(prepared, calib, "minmax", work)
    import onnxruntime as ort

    ref = ort.InferenceSession(str(prepared), providers=["CPUExecutionProvider"]).run(None, evals)[0]
    results = {}
    for name, scheme in ALTERNATIVES.items():
        path = work / f"{name}.onnx"
        quantize(prepared, path, ranges, scheme)
        emu = emulate(onnx.load(str(path)), evals, isa="avx2")
        out = emu.outputs[0]
        cos = float((ref * out).sum() / (np.linalg.norm(ref) * np.linalg.norm(out)))
        results[name] = {
            "top1": float(np.mean(ref.argmax(1) == out.argmax(1))),
            "cosine": cos,
            "clipped": emu.clipped_fraction,
        }
    return results


def test_avx2_target_uses_a_scheme_that_cannot_saturate(measured):
    chosen = scheme_for(load_target("x86_64-avx2"))
    key = {s.key: n for n, s in ALTERNATIVES.items()}[chosen.key]
    assert measured[key]["clipped"] == 0


def test_chosen_avx2_scheme_beats_the_saturating_ones(measured, record_property):
    for name, m in measured.items():
        record_property(name, m)
    chosen = {s.key: n for n, s in ALTERNATIVES.items()}[scheme_for(load_target("x86_64-avx2")).key]
    for loser in ("u8s8", "s8s8"):
        assert measured[loser]["clipped"] > 0
        assert measured[chosen]["cosine"] > measured[loser]["cosine"]
        assert measured[chosen]["top1"] >= measured[loser]["top1"]
    # And it is no worse than the other saturation-free choice by more than noise.
    assert measured[chosen]["top1"] >= measured["u8u8"]["top1"] - 0.01


def test_vnni_and_arm_targets_keep_full_8_bit_weights():
    vnni = scheme_for(load_target("x86_64-avx512-vnni"))
    assert not vnni.reduce_range and (vnni.activation, vnni.weight) == ("uint8", "int8")
    for name in ("arm64-cortex-a72", "arm64-cortex-a76", "jetson-orin-cpu"):
        scheme = scheme_for(load_target(name))
        assert not scheme.reduce_range and scheme.activation == scheme.weight == "int8"

