"""Frontends on real files: ONNX (external data, Constant weights, bad files, opsets),
PyTorch (pickled module, TorchScript, Python API) and scikit-learn pickles.

Every loaded model is run in onnxruntime and compared with the source framework's output.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import sys
import zipfile
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier

from compiler.frontends import LoadedModel, from_sklearn, from_torch_module, load_model
from compiler.frontends.onnx_ import supported_opsets
from edgectl.errors import MissingExtraError, ModelLoadError

pytestmark = [
    # The tests write TorchScript on purpose; torch 2.x warns that it is deprecated.
    pytest.mark.filterwarnings("ignore::DeprecationWarning:torch.jit"),
    pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning"),
]
RNG = np.random.default_rng(0)
TORCH_ATOL = 1e-5  # fp32 kernels differ in summation order between torch and onnxruntime
SKLEARN_ATOL = 1e-5


# ---- helpers ------------------------------------------------------------------------------


def run(loaded: LoadedModel | onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    model = loaded.model if isinstance(loaded, LoadedModel) else loaded
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """sha256 and mtime of every file in ``folder``: proves inputs are untouched."""
    return {
        p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(folder.iterdir())
    }


def sha256(*files: Path) -> str:
    return hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()


def assert_one_line(exc: pytest.ExceptionInfo[Exception], *needles: str) -> str:
    message = str(exc.value)
    assert "\n" not in message, message
    for needle in needles:
        assert needle in message, message
    return message


def dims(value: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def mlp_graph(opset: int, *, batch: str | int = "N", weights_as_constants: bool = False,
              w: np.ndarray | None = None) -> tuple[onnx.ModelProto, np.ndarray, np.ndarray]:
    """input [batch, 6] → MatMul W[6, 4] → Add b → Relu, plus its weights."""
    w = RNG.standard_normal((6, 4)).astype(np.float32) if w is None else w
    b = RNG.standard_normal(4).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["input", "W"], ["mm"]),
        helper.make_node("Add", ["mm", "B"], ["pre"]),
        helper.make_node("Relu", ["pre"], ["output"]),
    ]
    inits = [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")]
    if weights_as_constants:
        nodes = [
            helper.make_node("Constant", [], ["W"], value=inits[0]),
            helper.make_node("Constant", [], ["B"], value_floats=b.tolist()),
            *nodes,
        ]
        inits = []
    graph = helper.make_graph(
        nodes, "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 6])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [batch, 4])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    # onnx has no IR version for an opset it does not know yet (99): keep its newest then.
    if opset <= onnx.defs.onnx_opset_version():
        model.ir_version = helper.find_min_ir_version_for(list(model.opset_import))
    return model, w, b


def mlp_reference(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.maximum(x @ w + b, 0)


# ---- ONNX ---------------------------------------------------------------------------------


def test_onnx_file_loads_and_hash_is_the_file_sha(tmp_path: Path) -> None:
    model, w, b = mlp_graph(17)
    path = tmp_path / "plain.onnx"
    onnx.save_model(model, str(path))
    before = snapshot(tmp_path)
    loaded = load_model(path)
    assert (loaded.source_format, loaded.source_name) == ("onnx", "plain")
    assert loaded.source_sha256 == sha256(path)
    x = RNG.random((3, 6), dtype=np.float32)
    np.testing.assert_allclose(run(loaded, x)[0], mlp_reference(x, w, b), atol=1e-6)
    assert snapshot(tmp_path) == before


def test_external_data_is_loaded_from_the_model_folder(tmp_path: Path) -> None:
    model, w, b = mlp_graph(17, w=RNG.standard_normal((6, 4)).astype(np.float32))
    path = tmp_path / "ext.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=False,
                    size_threshold=0)
    data_files = sorted(p for p in tmp_path.iterdir() if p != path)
    assert [p.name for p in data_files] == ["B", "W"]  # one file per tensor, named after it
    before = snapshot(tmp_path)
    loaded = load_model(path)
    # The documented order: the .onnx bytes, then each data file sorted by its location.
    assert loaded.source_sha256 == sha256(path, *data_files)
    for tensor in loaded.model.graph.initializer:
        assert tensor.data_location == TensorProto.DEFAULT and tensor.raw_data
    x = RNG.random((2, 6), dtype=np.float32)
    np.testing.assert_allclose(run(loaded, x)[0], mlp_reference(x, w, b), atol=1e-6)
    assert snapshot(tmp_path) == before


def test_missing_external_file_is_named(tmp_path: Path) -> None:
    model, _, _ = mlp_graph(17)
    path = tmp_path / "ext.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, location="weights.bin",
                    size_threshold=0)
    (tmp_path / "weights.bin").unlink()
    with pytest.raises(ModelLoadError) as exc:
        load_model(path)
    assert_one_line(exc, "weights.bin", "not found", "copy it next to the model")


def test_external_data_outside_the_folder_is_refused(tmp_path: Path) -> None:
    model, _, _ = mlp_graph(17)
    inner = tmp_path / "inner"
    inner.mkdir()
    onnx.save_model(model, str(tmp_path / "tmp.onnx"), save_as_external_data=True,
                    location="weights.bin", size_threshold=0)
    # save_model refuses "../" itself, so write the location into the proto by hand.
    proto = onnx.load_model(str(tmp_path / "tmp.onnx"), load_external_data=False)
    for tensor in proto.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../outside.bin"
    (tmp_path / "outside.bin").write_bytes(b"\0" * 256)
    path = inner / "model.onnx"
    path.write_bytes(proto.SerializeToString())
    with pytest.raises(ModelLoadError) as exc:
        load_model(path)
    assert_one_line(exc, "outside the model's folder")


def test_constant_node_weights_become_initializers(tmp_path: Path) -> None:
    model, w, b = mlp_graph(17, weights_as_constants=True)
    path = tmp_path / "const.onnx"
    onnx.save_model(model, str(path))
    loaded = load_model(path)
    graph = loaded.model.graph
    assert not [n for n in graph.node if n.op_type == "Constant"]
    weights = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    np.testing.assert_array_equal(weights["W"], w)
    np.testing.assert_array_equal(weights["B"], b)  # from value_floats
    x = RNG.random((2, 6), dtype=np.float32)
    np.testing.assert_allclose(run(loaded, x)[0], mlp_reference(x, w, b), atol=1e-6)


def test_dynamic_batch_dimension_is_kept(tmp_path: Path) -> None:
    model, w, b = mlp_graph(17, batch="N")
    path = tmp_path / "dyn.onnx"
    onnx.save_model(model, str(path))
    loaded = load_model(path)
    assert dims(loaded.model.graph.input[0]) == ["N", 6]
    for batch in (1, 5):
        x = RNG.random((batch, 6), dtype=np.float32)
        np.testing.assert_allclose(run(loaded, x)[0], mlp_reference(x, w, b), atol=1e-6)


@pytest.mark.parametrize("cut", [0.5, 0.9, -3])
def test_truncated_onnx_is_a_one_line_error(tmp_path: Path, cut: float) -> None:
    model, _, _ = mlp_graph(17, w=RNG.standard_normal((6, 4)).astype(np.float32))
    data = model.SerializeToString()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: int(len(data) * cut)] if cut > 0 else data[: int(cut)])
    with pytest.raises(ModelLoadError) as exc:
        load_model(path)
    assert_one_line(exc, str(path))


def test_random_bytes_and_empty_files_are_refused(tmp_path: Path) -> None:
    noise = tmp_path / "noise.onnx"
    noise.write_bytes(np.random.default_rng(7).bytes(4096))
    with pytest.raises(ModelLoadError) as exc:
        load_model(noise)
    assert_one_line(exc, str(noise), "ONNX")
    empty = tmp_path / "empty.onnx"
    empty.touch()
    with pytest.raises(ModelLoadError) as exc:
        load_model(empty)
    assert_one_line(exc, str(empty), "empty", "re-export")


def test_missing_path_and_folder_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError) as exc:
        load_model(tmp_path / "nope.onnx")
    assert_one_line(exc, "nope.onnx", "no such file")
    with pytest.raises(ModelLoadError) as exc:
        load_model(tmp_path)
    assert_one_line(exc, "folder")


@pytest.mark.parametrize("opset", [7, 99])
def test_unsupported_opset_says_what_is_supported(tmp_path: Path, opset: int) -> None:
    model, _, _ = mlp_graph(opset)
    path = tmp_path / f"opset{opset}.onnx"
    path.write_bytes(model.SerializeToString())  # onnx.save would not check; neither do we
    low, high = supported_opsets()
    with pytest.raises(ModelLoadError) as exc:
        load_model(path)
    assert_one_line(exc, f"unsupported opset {opset} (supported {low}..{high})",
                    "re-export with opset_version=")


def test_supported_range_is_what_both_runtimes_know() -> None:
    low, high = supported_opsets()
    assert low == 10
    assert 17 <= high <= onnx.defs.onnx_opset_version()


def test_opset_11_is_upgraded_to_13_and_still_computes_the_same(tmp_path: Path) -> None:
    # Unsqueeze/Squeeze/ReduceSum take axes as attributes up to opset 12 and as inputs from
    # 13, and Softmax changed meaning at 13: a real conversion, not a relabelling.
    x_info = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 4])
    y_info = helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 4])
    nodes = [
        helper.make_node("Softmax", ["input"], ["sm"], axis=1),
        helper.make_node("Unsqueeze", ["sm"], ["u"], axes=[1]),
        helper.make_node("ReduceSum", ["u"], ["r"], axes=[1], keepdims=1),
        helper.make_node("Squeeze", ["r"], ["output"], axes=[1]),
    ]
    model = helper.make_model(helper.make_graph(nodes, "g", [x_info], [y_info]),
                              opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 6
    path = tmp_path / "opset11.onnx"
    onnx.save_model(model, str(path))
    loaded = load_model(path)
    assert [o.version for o in loaded.model.opset_import if o.domain in ("", "ai.onnx")] == [13]
    assert loaded.model.ir_version >= 7
    x = RNG.standard_normal((3, 4)).astype(np.float32)
    expected = np.exp(x) / np.exp(x).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(run(loaded, x)[0], expected, rtol=1e-5)


def test_a_pickle_named_onnx_is_never_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self) -> tuple[object, tuple[str, str]]:
            return (open, (str(marker), "w"))

    path = tmp_path / "model.onnx"
    path.write_bytes(pickle.dumps(Payload()))
    with pytest.raises(ModelLoadError) as exc:
        load_model(path)
    assert_one_line(exc, "pickle", "rename")
    assert not marker.exists()


def test_zip_that_is_not_pytorch_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "hello")
    with pytest.raises(ModelLoadError) as exc:
        load_model(path, input_shape=(1, 3))
    assert_one_line(exc, "not a PyTorch model")


# ---- PyTorch ------------------------------------------------------------------------------


class SmallNet(torch.nn.Module):
    """Conv + batch-norm + dropout + linear: exercises eval-mode export."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.norm = torch.nn.BatchNorm2d(4)
        self.drop = torch.nn.Dropout(0.5)
        self.fc = torch.nn.Linear(4 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(torch.relu(self.norm(self.conv(x))).flatten(1)))


@pytest.fixture(scope="module")
def small_net() -> SmallNet:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = SmallNet()
        # Non-trivial running statistics, so a wrong (training-mode) export would show.
        net.train()
        with torch.no_grad():
            for _ in range(3):
                net(torch.rand(16, 1, 8, 8))
    return net.eval()


def torch_reference(net: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return net.eval()(torch.from_numpy(x)).numpy()


SHAPE = (1, 1, 8, 8)


@pytest.mark.parametrize("kind", ["torch", "torchscript", "traced"])
def test_torch_files_load_and_match_torch(tmp_path: Path, small_net: SmallNet, kind: str) -> None:
    path = tmp_path / "net.pt"
    if kind == "torch":
        torch.save(small_net, path)  # the whole pickled module
    elif kind == "torchscript":
        torch.jit.save(torch.jit.script(small_net), str(path))
    else:
        torch.jit.save(torch.jit.trace(small_net, torch.rand(SHAPE)), str(path))
    before = snapshot(tmp_path)
    loaded = load_model(path, input_shape=SHAPE)
    assert loaded.source_format == ("torch" if kind == "torch" else "torchscript")
    assert (loaded.source_name, loaded.source_sha256) == ("net", sha256(path))
    graph = loaded.model.graph
    assert (graph.input[0].name, graph.output[0].name) == ("input", "output")
    assert dims(graph.input[0])[1:] == [1, 8, 8] and isinstance(dims(graph.input[0])[0], str)
    assert [o.version for o in loaded.model.opset_import if o.domain == ""] == [17]
    x = RNG.random((4, 1, 8, 8), dtype=np.float32)  # batch 4 through the dynamic axis
    np.testing.assert_allclose(run(loaded, x)[0], torch_reference(small_net, x), atol=TORCH_ATOL)
    # Same file, same bytes: the compiler's byte-identical artifacts start here.
    again = load_model(path, input_shape=SHAPE)
    assert again.model.SerializeToString() == loaded.model.SerializeToString()
    assert snapshot(tmp_path) == before  # input untouched, nothing written next to it


def test_torch_python_api_is_deterministic_and_keeps_training_mode(small_net: SmallNet) -> None:
    small_net.train()
    try:
        first = from_torch_module(small_net, torch.rand(SHAPE), name="small")
        assert small_net.training
    finally:
        small_net.eval()
    second = from_torch_module(small_net, torch.rand(SHAPE), name="small")
    assert first.model.SerializeToString() == second.model.SerializeToString()
    assert first.source_sha256 == second.source_sha256
    assert (first.source_format, first.source_name) == ("torch", "small")
    x = RNG.random((2, 1, 8, 8), dtype=np.float32)
    np.testing.assert_allclose(run(first, x)[0], torch_reference(small_net, x), atol=TORCH_ATOL)
    # No stack traces with absolute paths from the exporter leak into the model.
    assert not any(n.metadata_props for n in first.model.graph.node)


def test_torch_python_api_takes_a_script_module(small_net: SmallNet) -> None:
    scripted = torch.jit.script(small_net)
    first = from_torch_module(scripted, torch.rand(SHAPE), name="s")
    second = from_torch_module(scripted, torch.rand(SHAPE), name="s")
    assert first.source_format == "torchscript"
    assert first.model.SerializeToString() == second.model.SerializeToString()
    x = RNG.random((3, 1, 8, 8), dtype=np.float32)
    np.testing.assert_allclose(run(first, x)[0], torch_reference(small_net, x), atol=TORCH_ATOL)


def test_torch_file_needs_an_input_shape(tmp_path: Path, small_net: SmallNet) -> None:
    path = tmp_path / "net.pt"
    torch.save(small_net, path)
    with pytest.raises(ModelLoadError) as exc:
        load_model(path)
    assert_one_line(exc, str(path), "--input-shape")


def test_state_dict_is_not_a_model(tmp_path: Path, small_net: SmallNet) -> None:
    path = tmp_path / "weights.pth"
    torch.save(small_net.state_dict(), path)
    with pytest.raises(ModelLoadError) as exc:
        load_model(path, input_shape=SHAPE)
    assert_one_line(exc, "state_dict", "torch.save(model)")


def test_missing_torch_is_a_missing_extra(tmp_path: Path, small_net: SmallNet,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "net.pt"
    torch.jit.save(torch.jit.script(small_net), str(path))
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` fail
    with pytest.raises(MissingExtraError) as exc:
        load_model(path, input_shape=SHAPE)
    assert exc.value.extra == "torch"
    assert_one_line(exc, "pip install 'edgectl[torch]'")
    with pytest.raises(MissingExtraError):
        from_torch_module(object(), None, name="x")


# ---- scikit-learn -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    x, y = load_digits(return_X_y=True)
    return (x / 16.0).astype(np.float32), y


@pytest.fixture(scope="module")
def estimators(digits: tuple[np.ndarray, np.ndarray]) -> dict[str, object]:
    x, y = digits
    return {
        "mlp": MLPClassifier((32,), max_iter=300, random_state=0).fit(x[:1200], y[:1200]),
        "logreg": LogisticRegression(max_iter=1000).fit(x[:1200], y[:1200]),
    }


@pytest.mark.parametrize("name", ["mlp", "logreg"])
@pytest.mark.parametrize("writer", ["pickle", "joblib"])
def test_sklearn_pickles_load_and_match_sklearn(
    tmp_path: Path, estimators: dict[str, object], digits: tuple[np.ndarray, np.ndarray],
    name: str, writer: str,
) -> None:
    estimator: Any = estimators[name]
    path = tmp_path / (f"{name}.pkl" if writer == "pickle" else f"{name}.joblib")
    if writer == "pickle":
        path.write_bytes(pickle.dumps(estimator))
    else:
        joblib.dump(estimator, path, compress=3)  # compressed: sniffed by its zlib header
    before = snapshot(tmp_path)
    loaded = load_model(path)
    assert (loaded.source_format, loaded.source_name) == ("sklearn", name)
    assert loaded.source_sha256 == sha256(path)
    graph = loaded.model.graph
    assert graph.input[0].name == "input" and dims(graph.input[0])[1] == 64
    assert [o.name for o in graph.output] == ["label", "probabilities"]  # no ZipMap
    x = digits[0][1200:]
    labels, probabilities = run(loaded, x)
    np.testing.assert_allclose(probabilities, estimator.predict_proba(x), atol=SKLEARN_ATOL)
    np.testing.assert_array_equal(labels, estimator.predict(x))
    assert snapshot(tmp_path) == before


def test_from_sklearn_is_deterministic(estimators: dict[str, object]) -> None:
    first = from_sklearn(estimators["mlp"], name="mlp")
    second = from_sklearn(estimators["mlp"], name="mlp")
    assert first.model.SerializeToString() == second.model.SerializeToString()
    assert first.source_format == "sklearn"
    assert from_sklearn(estimators["mlp"], n_features=64, name="mlp").model == first.model


def test_non_estimator_pickle_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "thing.pkl"
    path.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    with pytest.raises(ModelLoadError) as exc:
        load_model(path)
    assert_one_line(exc, "not a scikit-learn estimator")


def test_unfitted_estimator_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "unfitted.pkl"
    path.write_bytes(pickle.dumps(LogisticRegression()))
    with pytest.raises(ModelLoadError) as exc:
        load_model(path)
    assert_one_line(exc, "not fitted")


def test_missing_skl2onnx_is_a_missing_extra(tmp_path: Path, estimators: dict[str, object],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "mlp.pkl"
    path.write_bytes(pickle.dumps(estimators["mlp"]))
    monkeypatch.setitem(sys.modules, "skl2onnx", None)
    with pytest.raises(MissingExtraError) as exc:
        load_model(path)
    assert exc.value.extra == "sklearn"
    assert_one_line(exc, "skl2onnx", "pip install 'edgectl[sklearn]'")


def test_pickled_torch_module_in_a_pkl_goes_to_the_torch_exporter(
    tmp_path: Path, small_net: SmallNet,
) -> None:
    path = tmp_path / "net.pkl"
    path.write_bytes(pickle.dumps(small_net))
    loaded = load_model(path, input_shape=SHAPE)
    assert loaded.source_format == "torch"
    x = RNG.random((2, 1, 8, 8), dtype=np.float32)
    np.testing.assert_allclose(run(loaded, x)[0], torch_reference(small_net, x), atol=TORCH_ATOL)


def test_nothing_is_written_to_the_working_directory(tmp_path: Path, small_net: SmallNet,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # torch.onnx can drop reports into its artifacts_dir (the cwd by default).
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    from_torch_module(small_net, torch.rand(SHAPE), name="n")
    assert os.listdir(work) == []
