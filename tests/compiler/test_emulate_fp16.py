"""compiler.emulate_fp16: fp16 ONNX computed the way an ARMv8.2 core's half-precision kernels do."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from compiler.emulate_fp16 import half_arithmetic_deviation, half_conv, half_dot, half_evaluator


def test_half_dot_rounds_every_step_like_an_fp16_accumulator() -> None:
    # 2048 + 1 is not representable in fp16 (spacing 2 there): a half-precision running sum of
    # 4096 ones stalls at 2048, where fp32 accumulation gives 4096.
    ones = np.ones((1, 4096), np.float16)
    assert half_dot(ones, ones.T)[0, 0] == 2048
    assert half_dot(ones, ones.T, init=np.array([7.0], np.float16))[0, 0] == 2048
    assert (ones.astype(np.float32) @ ones.T.astype(np.float32))[0, 0] == 4096


def test_half_dot_broadcasts_batches_and_starts_from_the_bias() -> None:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((3, 5, 7)).astype(np.float16)
    b = rng.standard_normal((7, 4)).astype(np.float16)
    bias = rng.standard_normal(4).astype(np.float16)
    got = half_dot(a, b, bias)
    assert got.dtype == np.float16 and got.shape == (3, 5, 4)
    np.testing.assert_allclose(got, a.astype(np.float64) @ b + bias, atol=2e-2)


def _conv_model(x_shape: list[int], w: np.ndarray, **attrs: object) -> onnx.ModelProto:
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], **attrs)  # type: ignore[arg-type]
    graph = helper.make_graph(
        [node], "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.linspace(-1, 1, w.shape[0]).astype(np.float32), "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize(("x_shape", "w_shape", "attrs"), [
    ([2, 4, 9, 9], [6, 4, 3, 3], {"pads": [1, 1, 1, 1]}),
    ([1, 4, 10, 11], [8, 2, 3, 3], {"group": 2, "strides": [2, 2], "pads": [0, 1, 2, 1]}),
    ([1, 6, 8, 8], [6, 1, 3, 3], {"group": 6, "dilations": [2, 2], "pads": [2, 2, 2, 2]}),
    ([1, 6, 8, 8], [12, 1, 3, 3], {"group": 6, "auto_pad": "SAME_UPPER", "strides": [2, 2]}),
    ([1, 3, 7, 7], [5, 3, 2, 2], {"auto_pad": "SAME_LOWER", "strides": [2, 2]}),
    ([2, 3, 12], [4, 3, 3], {"pads": [1, 0], "strides": [2]}),
])
def test_half_conv_computes_the_same_convolution_as_onnxruntime(x_shape, w_shape, attrs) -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = (rng.standard_normal(w_shape) / 4).astype(np.float32)
    model = _conv_model(x_shape, w, **attrs)
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    b = np.linspace(-1, 1, w.shape[0]).astype(np.float16)
    got = half_conv(x.astype(np.float16), w.astype(np.float16), b, attrs)
    assert got.dtype == np.float16 and got.shape == want.shape
    np.testing.assert_allclose(got.astype(np.float32), want, atol=3e-2)


def test_float32_nodes_keep_the_reference_implementation() -> None:
    rng = np.random.default_rng(2)
    w = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
    model = _conv_model([1, 2, 5, 5], w, pads=[1, 1, 1, 1])
    x = rng.standard_normal((1, 2, 5, 5)).astype(np.float32)
    plain = ReferenceEvaluator(model).run(None, {"x": x})[0]
    emulated = half_evaluator(model).run(None, {"x": x})[0]
    assert emulated.dtype == np.float32
    np.testing.assert_array_equal(emulated, plain)


def test_deviation_of_the_digits_fp16_artifact_exceeds_its_error_vs_fp32(digits_cnn, tmp_path: Path) -> None:
    """The fp16 digits CNN: this host runs it in fp32 after casts, so its error vs fp32 is tiny;
    half-precision accumulation moves the logits several times further (on an emulated
    Cortex-A76, `--verify-on arm64`: 0.10 vs 0.0058)."""
    from compiler.quantize import to_fp16

    fp16 = tmp_path / "m.fp16.onnx"
    to_fp16(digits_cnn.onnx_path, fp16)
    onnx.checker.check_model(onnx.load(str(fp16)), full_check=True)  # topologically sorted
    with np.load(digits_cnn.eval) as npz:
        data = {k: npz[k] for k in npz.files}
    fp32 = ort.InferenceSession(str(digits_cnn.onnx_path), providers=["CPUExecutionProvider"]).run(None, data)[0]
    host = ort.InferenceSession(str(fp16), providers=["CPUExecutionProvider"]).run(None, data)[0]
    dev = half_arithmetic_deviation(fp16, data, max_samples=32)
    assert dev.samples == 32 and dev.macs_per_sample > 0
    assert dev.max_abs > 3 * float(np.abs(host[:32] - fp32[:32]).max())
    assert dev.max_abs < 0.05 * float(np.abs(fp32).max())  # still fp16-sized, not garbage
    small = half_arithmetic_deviation(fp16, data, max_macs=dev.macs_per_sample * 5)
    assert small.samples == 5
    assert half_arithmetic_deviation(fp16, data, max_macs=1).samples == 2  # the self-test's pair, always
