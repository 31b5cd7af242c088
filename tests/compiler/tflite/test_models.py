"""Whole models: the digits CNN (torch), an MLP with scikit-learn's weights, and the zoo's YOLOv8n,
PP-OCR cls/rec and MobileNetV3-Small (slow)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from compiler.examples import DigitsSplits, digits_splits, train_digits_cnn, train_digits_mlp
from compiler.tflite import lower_to_tflite
from compiler.variants import _static_shapes
from tests import zoo
from tests.compiler.tflite.runners import run_litert, run_onnxruntime

# fp32 on both sides; only summation order differs, so logits agree to a few ulp of their scale.
MAX_RELATIVE_ERROR = 1e-5


@pytest.fixture(scope="module")
def splits() -> DigitsSplits:
    return digits_splits()


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / np.abs(want).max())


def digits_cnn_onnx(splits: DigitsSplits) -> onnx.ModelProto:
    import torch

    net = train_digits_cnn(splits)
    buffer = io.BytesIO()
    torch.onnx.export(
        net, torch.from_numpy(splits.eval_x[:1]), buffer, dynamo=False, opset_version=17,
        input_names=["input"], output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
    )
    return onnx.load_from_string(buffer.getvalue())


def mlp_onnx(splits: DigitsSplits) -> onnx.ModelProto:
    """The MatMul + Add + Relu graph skl2onnx writes for an MLPClassifier, softmax on top."""
    mlp = train_digits_mlp(splits)
    inits = {f"w{i}": w for i, w in enumerate(mlp.coefs_)} | {f"b{i}": b for i, b in enumerate(mlp.intercepts_)}
    nodes = [
        helper.make_node("MatMul", ["input", "w0"], ["h0"]), helper.make_node("Add", ["h0", "b0"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["h2"]), helper.make_node("MatMul", ["h2", "w1"], ["h3"]),
        helper.make_node("Add", ["h3", "b1"], ["logits"]), helper.make_node("Softmax", ["logits"], ["probabilities"]),
    ]
    graph = helper.make_graph(
        nodes, "digits_mlp",
        [helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("probabilities", onnx.TensorProto.FLOAT, ["batch", 10])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_digits_cnn_matches_onnxruntime_on_held_out_digits(splits: DigitsSplits) -> None:
    model = digits_cnn_onnx(splits)
    x = splits.eval_x
    assert len(x) >= 300
    want = run_onnxruntime(model, {"input": x})[0]
    got = run_litert(lower_to_tflite(model), {"input": x})[0]
    agreement = float((got.argmax(1) == want.argmax(1)).mean())
    error = relative_error(got, want)
    print(f"digits CNN on {len(x)} held-out digits: top-1 agreement {agreement:.2%}, max relative error {error:.2e}")
    assert agreement == 1.0
    assert error < MAX_RELATIVE_ERROR
    assert float((got.argmax(1) == splits.eval_y).mean()) > 0.9


def test_sklearn_mlp_matches_onnxruntime(splits: DigitsSplits) -> None:
    model = mlp_onnx(splits)
    x = splits.eval_x.reshape(len(splits.eval_x), -1)
    want = run_onnxruntime(model, {"input": x})[0]
    got = run_litert(lower_to_tflite(model), {"input": x})[0]
    assert float((got.argmax(1) == want.argmax(1)).mean()) == 1.0
    assert np.abs(got - want).max() < 1e-5


# Pretrained (and one seeded) models from the zoo. fp32 on both sides: cosine is 1 to 7 digits and
# the max error, relative to the output's largest magnitude, stays at a few ulp of accumulated
# rounding (measured 4e-14 to 5e-6); 1e-4 leaves room for other CPUs' XNNPACK kernels.
ZOO_MODELS = ["yolov8n_nudenet", "ppocr_cls", "ppocr_rec", "mobilenet_v3_small"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ZOO_MODELS)
def test_zoo_model_matches_onnxruntime(name: str, zoo_cache: Path) -> None:
    model = getattr(zoo, name)(zoo_cache)
    with np.load(model.eval) as data:
        samples = {key: data[key][:6] for key in data.files}
    onnx_model = _static_shapes(onnx.load(str(model.onnx_path)), samples)
    tflite_bytes = lower_to_tflite(onnx_model)
    agree, total = 0, 0
    for i in range(6):
        feed = {key: value[i : i + 1] for key, value in samples.items()}
        for got, want in zip(run_litert(tflite_bytes, feed), run_onnxruntime(onnx_model, feed), strict=True):
            assert got.shape == want.shape
            cosine = float(np.dot(got.ravel(), want.ravel()) / np.linalg.norm(got) / np.linalg.norm(want))
            assert cosine > 0.99999, (name, i, cosine)
            assert relative_error(got, want) < 1e-4, (name, i, relative_error(got, want))
            if model.task == "classify" or name == "ppocr_rec":  # rec: a class per text position
                agree += int((got.argmax(-1) == want.argmax(-1)).sum())
                total += got.argmax(-1).size
    if total:
        assert agree == total, f"{name}: top-1 agreement {agree}/{total}"
