"""Every int8 conformance case gives the same outputs on each of LiteRT's kernel paths.

An int8 artifact runs on whichever path a device's runtime takes: XNNPACK (the default delegate,
whose kernels differ per CPU: NEON, dot-product, I8MM, SME), the builtin optimized kernels
(ruy/NEON) when XNNPACK is off or declines an op, or the reference kernels. Each path reads the
flatbuffer's quantization fields on its own, so a field that only one path honours (zero points,
per-channel scales, quantized_dimension, bias scale, op versions) shows up here as disagreement,
on this host and without emulation. The bound is one LSB of the output's scale: the paths differ
only in where they round a requantization or a lookup table at ties.

What it cannot see: a CPU-specific kernel of one path on another architecture. The arm64 check
(tests/compiler/test_crossarch.py) runs those under qemu, emulating the target's CPU.
"""

from __future__ import annotations

import numpy as np
import pytest

from compiler.tflite import lower_to_tflite
from tests.compiler.tflite.cases import INT8_EXCLUDES, INT8_MAX_LSB, Case, all_cases
from tests.compiler.tflite.quantized import output_scales, qdq_model
from tests.compiler.tflite.runners import run_litert

INT8_CASES = [case for case in all_cases() if case.name not in INT8_EXCLUDES]
PATHS = ("AUTO", "BUILTIN_WITHOUT_DEFAULT_DELEGATES")


@pytest.mark.parametrize("case", INT8_CASES, ids=str)
def test_int8_kernel_paths_agree_with_the_reference_kernels(case: Case) -> None:
    qdq = qdq_model(case)
    data = lower_to_tflite(qdq, precision="int8")
    reference = run_litert(data, case.inputs, resolver="BUILTIN_REF")
    scales = list(output_scales(qdq).values())
    for path in PATHS:
        got = run_litert(data, case.inputs, resolver=path)
        for out, ref, scale in zip(got, reference, scales, strict=True):
            assert out.shape == ref.shape
            if scale is None:  # a float output: a float island's kernels, held to the case's fp32 tolerance
                np.testing.assert_allclose(out, ref, rtol=case.rtol, atol=case.atol, err_msg=f"{path}: {case.why}")
                continue
            lsb = float(np.abs(out.astype(np.float64) - ref).max()) / scale
            assert lsb <= INT8_MAX_LSB * (1 + 1e-4), f"{case.name}: {path} is {lsb:.2f} LSB from BUILTIN_REF"
