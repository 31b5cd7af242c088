"""Every op the TFLite backend claims runs in LiteRT like it runs in onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest

from compiler.tflite import SUPPORTED_OPS, lower_to_tflite
from tests.compiler.tflite.cases import Case, all_cases
from tests.compiler.tflite.runners import run_litert, run_onnxruntime

CASES = all_cases()


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
