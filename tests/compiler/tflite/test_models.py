"""Whole models: the digits CNN (torch), an MLP with scikit-learn's weights, and the zoo's YOLOv8n,
PP-OCR cls/rec, MobileNetV3-Small and EfficientNet-Lite0 (slow)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from compiler.examples import DigitsSplits, digits_splits, train_digits_cnn, train_digits_mlp
from compiler.tflite import lower_to_tflite
from compiler.variants import static_shapes
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
ZOO_MODELS = ["yolov8n_nudenet", "ppocr_cls", "ppocr_rec", "mobilenet_v3_small", "efficientnet_lite0"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ZOO_MODELS)
def test_zoo_model_matches_onnxruntime(name: str, zoo_cache: Path) -> None:
    model = getattr(zoo, name)(zoo_cache)
    with np.load(model.eval) as data:
        samples = {key: data[key][:6] for key in data.files}
    onnx_model = static_shapes(onnx.load(str(model.onnx_path)), samples)
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


# ---- int8 and fp16: the compiled artifacts of a LiteRT target ----------------------------------

# TFLite int8 must pick the class the ONNX int8 artifact (same scales, run in onnxruntime) picks.
MIN_INT8_AGREEMENT = 0.995
# Logits may differ by a requantization step where the two integer pipelines round differently.
MAX_INT8_LOGIT_LSB = 2.0


def _int8_agreement(folder: Path, eval_data: Path) -> tuple[float, float, int]:
    """Top-1 agreement and max logit difference (in LSB of the output scale) of tflite-int8 vs int8."""
    from compiler.fidelity import run
    from compiler.tflite.qdq import strip_qdq

    manifest = json.loads((folder / "manifest.json").read_text())
    files = {v["variant"]: v["file"] for v in manifest["variants"] if v.get("file")}
    onnx_int8, tflite_int8 = folder / files["int8"], folder / files["tflite-int8"]
    tfl = next(v for v in manifest["variants"] if v["variant"] == "tflite-int8")
    assert tfl["quantization"]["shares_scales_with"]["sha256"] == manifest["files"][files["int8"]]
    with np.load(eval_data) as npz:
        data = {k: npz[k] for k in npz.files}
    want, got = run(onnx_int8, data).values[0], run(tflite_int8, data).values[0]
    _, plan = strip_qdq(onnx.load(str(onnx_int8)))
    scale = plan.activations[manifest["model"]["outputs"][0]["name"]].scale
    agreement = float((got.argmax(1) == want.argmax(1)).mean())
    return agreement, float(np.abs(got - want).max()) / scale, len(want)


def test_digits_cnn_tflite_int8_agrees_with_onnx_int8(digits_artifacts) -> None:
    agreement, lsb, n = _int8_agreement(digits_artifacts.folder("arm64-cortex-a72"), digits_artifacts.eval_data)
    print(f"digits CNN, {n} held-out digits: tflite-int8 vs ONNX int8 top-1 agreement {agreement:.2%}, "
          f"max logit difference {lsb:.2f} LSB")
    assert agreement >= MIN_INT8_AGREEMENT and lsb <= MAX_INT8_LOGIT_LSB


def test_mnist_cnn_tflite_int8_agrees_with_onnx_int8(mnist_cnn, tmp_path: Path) -> None:
    from compiler.pipeline import CompileOptions, compile_model
    from edgectl.targets import load_target

    options = CompileOptions(targets=(load_target("arm64-cortex-a76"),), out_dir=tmp_path / "out",
                             calibration=mnist_cnn.calibration, eval_data=mnist_cnn.eval, labels=mnist_cnn.labels)
    result = compile_model(mnist_cnn.onnx_path, options)
    rows = {r.variant: r for r in result.rows}
    assert result.exit_code == 0 and rows["tflite-int8"].emitted and rows["tflite-fp16"].emitted, result.to_dict()
    agreement, lsb, n = _int8_agreement(tmp_path / "out" / "arm64-cortex-a76", mnist_cnn.eval)
    size = rows["tflite-int8"].fidelity["size_bytes"] / rows["tflite-fp32"].fidelity["size_bytes"]  # type: ignore[index]
    print(f"MNIST CNN, {n} held-out images: tflite-int8 vs ONNX int8 top-1 agreement {agreement:.2%}, "
          f"max logit difference {lsb:.2f} LSB; tflite int8/fp32 size {size:.3f}")
    assert agreement >= MIN_INT8_AGREEMENT and lsb <= MAX_INT8_LOGIT_LSB
    # int8 weights are a quarter of fp32's; the MNIST CNN has only ~9k weights, so the ~5 KB of
    # flatbuffer structure (names, shapes, per-channel scale tables) lifts the ratio to ~0.37.
    assert size < 0.4


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_digits_cnn_fp16_weights_stay_close_to_fp32(splits: DigitsSplits) -> None:
    model = digits_cnn_onnx(splits)
    x = splits.eval_x
    want = run_litert(lower_to_tflite(model), {"input": x})[0]
    got = run_litert(lower_to_tflite(model, precision="fp16"), {"input": x})[0]
    error = relative_error(got, want)
    print(f"digits CNN fp16 weights vs fp32: max relative error {error:.2e}")
    assert float((got.argmax(1) == want.argmax(1)).mean()) == 1.0
    # float16 keeps 11 significant bits (2^-11 ≈ 4.9e-4 per weight); errors partly cancel in sums.
    assert error < 2e-3
