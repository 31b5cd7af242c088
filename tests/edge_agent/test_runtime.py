"""Runners on the real compiled artifacts: onnxruntime (int8, fp32) and LiteRT (fp32 TFLite)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from edge_agent import runtime as rt
from edge_agent.runtime import InferenceError, RuntimeLoadError, TensorSpec, open_runner, selftest
from tests.artifacts import CompiledArtifacts
from tests.edge_agent.conftest import EMITTED

ROOT = Path(__file__).resolve().parents[2]


def test_emitted_list_matches_the_manifests(digits_artifacts: CompiledArtifacts):
    found = {(t, v["variant"]) for t in digits_artifacts.folders for v in digits_artifacts.variants(t)}
    assert found == set(EMITTED)


@pytest.mark.parametrize(("target", "variant"), EMITTED)
def test_every_artifact_loads_and_passes_its_selftest(digits_artifacts: CompiledArtifacts, target: str, variant: str):
    entry = digits_artifacts.variant(target, variant)
    runner = open_runner(digits_artifacts.artifact(target, variant), entry["runtime"], threads=1)
    try:
        assert runner.inputs == (TensorSpec("input", "float32", (None, 1, 8, 8)),)
        assert runner.outputs == (TensorSpec("output", "float32", (None, 10)),)
        result = selftest(runner, digits_artifacts.selftest_npz(target), variant, entry["selftest_atol"])
        assert result.ok, result.reason
        assert result.samples == 2 and result.max_abs <= entry["selftest_atol"]
        out = runner.run(digits_artifacts.sample(3))
        assert out["output"].shape == (3, 10) and out["output"].dtype == np.float32
    finally:
        runner.close()


def test_litert_resizes_for_each_batch_size(digits_artifacts: CompiledArtifacts):
    target = "arm64-cortex-a72"
    lite = open_runner(digits_artifacts.artifact(target, "tflite-fp32"), "litert")
    ort = open_runner(digits_artifacts.artifact(target, "fp32"), "onnxruntime")
    x = digits_artifacts.sample(5)["input"]
    for n in (1, 5, 2, 1):
        got = lite.run({"input": x[:n]})["output"]
        assert got.shape == (n, 10)
        np.testing.assert_allclose(got, ort.run({"input": x[:n]})["output"], atol=1e-4)
    # A shape the model cannot take fails cleanly, and the next good request still runs.
    with pytest.raises(InferenceError, match=r"LiteRT failed on digits_cnn\.fp32\.tflite"):
        lite.run({"input": x[:2, :, :4, :]})
    assert lite.run({"input": x[:2]})["output"].shape == (2, 10)


def test_litert_runner_is_safe_across_threads(digits_artifacts: CompiledArtifacts):
    lite = open_runner(digits_artifacts.artifact("arm64-cortex-a72", "tflite-fp32"), "litert")
    x = digits_artifacts.sample(4)["input"]
    expected = {n: lite.run({"input": x[:n]})["output"] for n in (1, 2, 3, 4)}
    failures: list[str] = []

    def hammer(n: int) -> None:
        for _ in range(50):
            got = lite.run({"input": x[:n]})["output"]
            if not np.allclose(got, expected[n], atol=1e-5):
                failures.append(f"batch {n}")

    threads = [threading.Thread(target=hammer, args=(n,)) for n in (1, 2, 3, 4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []


def test_int8_io_tflite_is_served_with_float_values(digits_artifacts: CompiledArtifacts, tmp_path: Path):
    """A tflite-int8 built with int8 inputs/outputs (compile --tflite-io int8) takes and returns the
    same float values as the float-io build: the runner quantizes with the tensors' own params."""
    import onnx

    from compiler.tflite import lower_to_tflite

    target = "arm64-cortex-a72"
    qdq = onnx.load(str(digits_artifacts.artifact(target, "int8")))
    path = tmp_path / "digits_cnn.int8-io.tflite"
    path.write_bytes(lower_to_tflite(qdq, precision="int8", io="int8"))
    ints = open_runner(path, "litert")
    floats = open_runner(digits_artifacts.artifact(target, "tflite-int8"), "litert")
    assert ints.inputs == floats.inputs and ints.outputs == floats.outputs  # float32 at the boundary
    entry = digits_artifacts.variant(target, "tflite-int8")
    result = selftest(ints, digits_artifacts.selftest_npz(target), "tflite-int8", entry["selftest_atol"])
    assert result.ok, result.reason
    x = digits_artifacts.sample(64)
    got, want = ints.run(x)["output"], floats.run(x)["output"]
    assert got.dtype == np.float32
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.98
    # Quantizing in Python (round half to even) and in the QUANTIZE op (half away from zero) can
    # differ on exact ties by one input step; that moves a logit by at most a few output steps.
    scale = float(np.min(np.abs(np.diff(np.unique(want)))))
    assert np.abs(got - want).max() <= 4 * scale


def test_a_selftest_against_another_variants_recording_fails(digits_artifacts: CompiledArtifacts):
    target = "x86_64-avx2"
    runner = open_runner(digits_artifacts.artifact(target, "int8"), "onnxruntime")
    result = selftest(runner, digits_artifacts.selftest_npz(target), "fp32", atol=1e-6)
    assert not result.ok and result.max_abs > 1e-6
    assert "differs by" in (result.reason or "")


def test_selftest_reports_missing_recordings_and_unreadable_files(digits_artifacts: CompiledArtifacts, tmp_path: Path):
    target = "x86_64-avx2"
    runner = open_runner(digits_artifacts.artifact(target, "fp32"), "onnxruntime")
    missing = selftest(runner, digits_artifacts.selftest_npz(target), "tflite-fp32", atol=1.0)
    assert not missing.ok and "no recorded output 'output' for variant 'tflite-fp32'" in (missing.reason or "")
    (tmp_path / "selftest.npz").write_bytes(b"not a zip")
    broken = selftest(runner, tmp_path / "selftest.npz", "fp32", atol=1.0)
    assert not broken.ok and "cannot read selftest.npz" in (broken.reason or "")
    np.savez(tmp_path / "other.npz", **{"input.image": np.zeros((1, 3), np.float32)})
    other = selftest(runner, tmp_path / "other.npz", "fp32", atol=1.0)
    assert not other.ok and "no input 'input'" in (other.reason or "")


def test_selftest_compares_integer_outputs_exactly(fake_runner, tmp_path: Path):
    runner = fake_runner(lambda f: {"y": f["x"].astype(np.int64)})
    runner.outputs = (TensorSpec("y", "int64", (None, 4)),)
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    np.savez(tmp_path / "st.npz", **{"input.x": x, "output.v.y": x.astype(np.int64)})
    assert selftest(runner, tmp_path / "st.npz", "v", atol=0.0).ok
    np.savez(tmp_path / "st.npz", **{"input.x": x, "output.v.y": x.astype(np.int64) + 1})
    assert not selftest(runner, tmp_path / "st.npz", "v", atol=10.0).ok  # atol does not apply to integers


def test_selftest_fails_on_nan(fake_runner, tmp_path: Path):
    runner = fake_runner(lambda f: {"y": np.full_like(f["x"], np.nan)})
    x = np.ones((2, 4), np.float32)
    np.savez(tmp_path / "st.npz", **{"input.x": x, "output.v.y": x})
    result = selftest(runner, tmp_path / "st.npz", "v", atol=1e9)
    assert not result.ok and "differs by inf" in (result.reason or "")


@pytest.mark.parametrize(("variant", "runtime", "mangle", "expected"), [
    ("int8", "onnxruntime", lambda b: b[: len(b) // 2], "onnxruntime .* cannot load model\\.onnx \\(InvalidProtobuf"),
    ("tflite-fp32", "litert", lambda b: b[: len(b) // 3], "LiteRT cannot load model\\.tflite"),
    ("int8", "litert", lambda b: b, "LiteRT cannot load model\\.onnx .*not a valid Flatbuffer"),
    ("tflite-fp32", "onnxruntime", lambda b: b, "onnxruntime .* cannot load model\\.tflite"),
    ("int8", "onnxruntime", lambda b: b"{}", "cannot load model\\.onnx"),
])
def test_corrupt_and_foreign_files_are_refused(digits_artifacts: CompiledArtifacts, tmp_path: Path,
                                               variant, runtime, mangle, expected):
    src = digits_artifacts.artifact("arm64-cortex-a72", variant)
    path = tmp_path / f"model{src.suffix}"
    path.write_bytes(mangle(src.read_bytes()))
    with pytest.raises(RuntimeLoadError, match=expected) as info:
        open_runner(path, runtime)
    message = str(info.value)
    assert "\n" not in message and "re-fetch the artifact" in message
    assert str(tmp_path) not in message  # the file name, not ORT's long path


def test_missing_file_and_unknown_runtime(tmp_path: Path):
    with pytest.raises(RuntimeLoadError, match="does not exist: reinstall the artifact"):
        open_runner(tmp_path / "nope.onnx", "onnxruntime")
    with pytest.raises(RuntimeLoadError, match=r"unknown runtime 'tensorrt' for m\.onnx: use one of onnxruntime, litert"):
        open_runner(tmp_path / "m.onnx", "tensorrt")


def test_runtime_aliases_open_tflite_in_litert(digits_artifacts: CompiledArtifacts):
    path = digits_artifacts.artifact("arm64-cortex-a72", "tflite-fp32")
    for alias in ("tflite-runtime", "tflite_runtime"):
        assert open_runner(path, alias).runtime == "litert"


@pytest.mark.parametrize(("variant", "runtime"), [("fp32", "onnxruntime"), ("tflite-fp32", "litert")])
def test_bad_feeds_and_closed_runners_raise_inference_error(digits_artifacts: CompiledArtifacts, variant, runtime):
    runner = open_runner(digits_artifacts.artifact("arm64-cortex-a72", variant), runtime)
    with pytest.raises(InferenceError, match="failed on digits_cnn"):
        runner.run({"input": np.zeros((1, 1, 8, 8), np.float64)})  # the runner does not cast: serving does
    with pytest.raises(InferenceError):
        runner.run({"wrong": np.zeros((1, 1, 8, 8), np.float32)})
    runner.close()
    with pytest.raises(InferenceError, match="is closed: load it again"):
        runner.run({"input": np.zeros((1, 1, 8, 8), np.float32)})


def test_importing_the_serving_stack_imports_no_runtime_and_no_numpy():
    code = ("import json, sys, edge_agent.runtime, edge_agent.serving, edge_agent.http_api, edge_agent.probe; "
            "print(json.dumps([m for m in ('numpy', 'onnxruntime', 'ai_edge_litert', 'tflite_runtime') "
            "if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT,
                         env={"PYTHONPATH": str(ROOT), "PATH": ""})
    assert json.loads(out.stdout) == []


def test_versions_come_from_metadata():
    versions = rt.runtime_versions()
    assert versions["onnxruntime"] and versions["numpy"]
    assert rt.available_runtimes()["onnxruntime"].startswith("onnxruntime ")


@pytest.mark.parametrize(("installed", "expected"), [
    ({"ai-edge-litert": "2.3.0", "tflite-runtime": None, "numpy": "2.1.0"}, "ai-edge-litert"),
    ({"ai-edge-litert": "2.3.0", "tflite-runtime": "2.14.0", "numpy": "1.26.4"}, "ai-edge-litert"),
    ({"ai-edge-litert": None, "tflite-runtime": "2.14.0", "numpy": "1.26.4"}, "tflite-runtime"),
    ({"ai-edge-litert": None, "tflite-runtime": "2.14.0", "numpy": "2.1.0"}, None),  # its wheels need numpy<2
    ({"ai-edge-litert": None, "tflite-runtime": None, "numpy": "2.1.0"}, None),
])
def test_litert_backend_choice(monkeypatch: pytest.MonkeyPatch, installed, expected):
    monkeypatch.setattr(rt, "runtime_versions", lambda: {"onnxruntime": "1.20.0", **installed})
    assert rt.litert_backend() == expected
    assert ("litert" in rt.available_runtimes()) == (expected is not None)


def test_one_line_trims_onnxruntime_messages():
    exc = RuntimeError("[ONNXRuntimeError] : 7 : INVALID_PROTOBUF : Load model from /very/long/path/m.onnx "
                       "failed:Protobuf parsing failed.")
    assert rt.one_line(exc) == "RuntimeError: Protobuf parsing failed."
    exc = RuntimeError("[ONNXRuntimeError] : 1 : FAIL : Non-zero status code returned while running Conv node. "
                       "Name:'c' Status Message: /src/conv.cc:42 Foo X was false. Invalid input shape\n  more")
    assert rt.one_line(exc) == "RuntimeError: Invalid input shape more"


def test_copy_of_an_artifact_loads_from_anywhere(digits_artifacts: CompiledArtifacts, tmp_path: Path):
    # The agent loads from its install store, not from the compiler's folder.
    src = digits_artifacts.artifact("arm64-cortex-a72", "tflite-fp32")
    dst = tmp_path / "store" / src.name
    dst.parent.mkdir()
    shutil.copyfile(src, dst)
    assert open_runner(dst, "litert").run(digits_artifacts.sample(1))["output"].shape == (1, 10)
