"""Every op the TFLite backend claims runs in LiteRT like it runs in onnxruntime, in fp32, fp16
(float16 weights) and int8 (onnxruntime's QDQ graph of the same case)."""

from __future__ import annotations

import numpy as np
import pytest

from compiler.tflite import SUPPORTED_OPS, lower_to_tflite
from tests.compiler.tflite.cases import INT8_EXCLUDES, INT8_LSB_WHY, INT8_MAX_LSB, Case, all_cases
from tests.compiler.tflite.quantized import fp16_rounded, output_scales, qdq_model
from tests.compiler.tflite.runners import run_litert, run_onnxruntime

CASES = all_cases()
INT8_CASES = [case for case in CASES if case.name not in INT8_EXCLUDES]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_op_matches_onnxruntime(case: Case) -> None:
    expected = run_onnxruntime(case.model, case.inputs)
    actual = run_litert(lower_to_tflite(case.model), case.inputs)
    assert len(actual) == len(expected)
    for got, want in zip(actual, expected, strict=True):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=case.rtol, atol=case.atol, err_msg=case.why)


def test_every_supported_op_has_a_case() -> None:
    covered = {case.op for case in CASES}
    assert set(SUPPORTED_OPS) - covered == set()


def test_every_case_exercises_its_op() -> None:
    for case in CASES:
        assert case.op in {node.op_type for node in case.model.graph.node}, case.name


@pytest.mark.parametrize("case", CASES, ids=str)
def test_op_fp16_weights_match_onnxruntime(case: Case) -> None:
    expected = run_onnxruntime(fp16_rounded(case.model), case.inputs)
    actual = run_litert(lower_to_tflite(case.model, precision="fp16"), case.inputs)
    rtol = atol = case.fp16_tol
    for got, want in zip(actual, expected, strict=True):
        assert got.shape == want.shape
        np.testing.assert_allclose(
            got, want, rtol=case.rtol if rtol is None else rtol, atol=case.atol if atol is None else atol,
            err_msg=case.fp16_why or case.why,
        )


@pytest.mark.parametrize("case", INT8_CASES, ids=str)
def test_op_int8_matches_onnxruntime_on_the_qdq_graph(case: Case) -> None:
    qdq = qdq_model(case)
    expected = run_onnxruntime(qdq, case.inputs)
    actual = run_litert(lower_to_tflite(qdq, precision="int8"), case.inputs)
    for got, want, scale in zip(actual, expected, output_scales(qdq).values(), strict=True):
        assert got.shape == want.shape and got.dtype == np.float32
        if scale is None:  # an output the QDQ graph leaves in float
            np.testing.assert_allclose(got, want, rtol=case.rtol, atol=case.atol, err_msg=case.why)
            continue
        lsb = float(np.abs(got - want).max()) / scale
        print(f"{case.name}: {lsb:.2f} LSB")
        assert lsb <= INT8_MAX_LSB * (1 + 1e-4), f"{case.name}: {lsb:.2f} LSB apart ({INT8_LSB_WHY})"


def test_every_supported_op_has_fp32_fp16_and_int8_cases() -> None:
    # fp16 runs every case; int8 every case not excluded, so each op needs one that is not.
    assert set(SUPPORTED_OPS) - {case.op for case in INT8_CASES} == set()
    assert set(INT8_EXCLUDES) <= {case.name for case in CASES}, "an exclude names no case"
