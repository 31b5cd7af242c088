"""ModelServer on the real artifacts: predict, validation, swap, rollback, MQTT codec."""

from __future__ import annotations

import gc
import json
import threading
import weakref
from pathlib import Path

import numpy as np
import pytest

from edge_agent.runtime import InferenceError, RuntimeLoadError
from edge_agent.serving import (
    JSON,
    NPY,
    NPZ,
    BadRequest,
    ModelServer,
    RollbackError,
    UnknownModel,
    decode_npz,
    encode_npy,
    encode_npz,
    handle_mqtt_infer,
)
from tests.artifacts import CompiledArtifacts

ARM = "arm64-cortex-a72"


@pytest.fixture
def server(digits_artifacts: CompiledArtifacts) -> ModelServer:
    s = ModelServer(threads=1)
    s.load("digits", digits_artifacts.artifact(ARM, "int8"), "onnxruntime", version="1", meta={"variant": "int8"})
    return s


@pytest.mark.parametrize(("variant", "runtime"), [("int8", "onnxruntime"), ("fp32", "onnxruntime"),
                                                  ("tflite-fp32", "litert")])
def test_predict_matches_the_recorded_outputs(digits_artifacts: CompiledArtifacts, variant, runtime):
    s = ModelServer(threads=1)
    s.load("digits", digits_artifacts.artifact(ARM, variant), runtime, version="1")
    with np.load(digits_artifacts.selftest_npz(ARM)) as npz:
        x, expected = npz["input.input"], npz[f"output.{variant}.output"]
    got = s.predict("digits", {"input": x})["output"]
    np.testing.assert_allclose(got, expected, atol=digits_artifacts.variant(ARM, variant)["selftest_atol"])


def test_models_lists_version_runtime_specs_and_metrics(server: ModelServer, digits_artifacts: CompiledArtifacts):
    for _ in range(3):
        server.predict("digits", digits_artifacts.sample(1))
    [row] = server.models()
    assert row["name"] == "digits" and row["version"] == "1" and row["runtime"] == "onnxruntime"
    assert row["file"] == "digits_cnn.int8.onnx" and row["meta"] == {"variant": "int8"}
    assert row["inputs"] == [{"name": "input", "dtype": "float32", "shape": [None, 1, 8, 8]}]
    assert row["outputs"] == [{"name": "output", "dtype": "float32", "shape": [None, 10]}]
    assert row["metrics"]["requests"] == 3 and row["metrics"]["errors"] == 0 and row["metrics"]["p50_ms"] > 0
    assert row["previous_version"] is None
    json.dumps(server.models())  # what GET /v1/models and telemetry send
    snap = server.snapshot("digits")
    assert snap is not None and snap.requests == 3
    assert server.snapshot("nope") is None


X = np.zeros((1, 1, 8, 8), np.float32)


@pytest.mark.parametrize(("feeds", "message"), [
    ({"image": X}, "unknown input 'image': the model expects 'input' float32 ['N', 1, 8, 8]"),
    ({"input": X, "extra": X}, "unknown input 'extra'"),
    ({}, "missing input 'input'"),
    ({"input": X[0]}, "input 'input' expects shape ['N', 1, 8, 8], got [1, 8, 8]"),
    ({"input": np.zeros((1, 1, 8, 9), np.float32)}, "expects shape ['N', 1, 8, 8], got [1, 1, 8, 9]"),
    ({"input": X.astype(str)}, "input 'input' expects float32, got str"),
    ({"input": X.astype(np.complex64)}, "expects float32, got complex64"),
    ({"input": [[1, 2], [3]]}, "input 'input' is not a rectangular array"),
    ([X], "inputs must be an object of input name → array"),
])
def test_bad_requests_name_the_input_and_what_it_expects(server: ModelServer, feeds, message):
    with pytest.raises(BadRequest) as info:
        server.predict("digits", feeds)
    assert message in str(info.value)
    assert server.models()[0]["metrics"]["requests"] == 0  # a client's mistake is not the model's error


@pytest.mark.parametrize("value", [X.astype(np.float64), X.astype(np.int64), X.tolist(), X.astype(np.float16)])
def test_castable_inputs_are_cast_to_the_models_dtype(server: ModelServer, value):
    expected = server.predict("digits", {"input": X})["output"]
    np.testing.assert_array_equal(server.predict("digits", {"input": value})["output"], expected)


def test_integer_inputs_are_range_checked(fake_runner):
    from edge_agent.runtime import TensorSpec

    runner = fake_runner(lambda f: {"y": f["x"]})
    runner.inputs = (TensorSpec("x", "uint8", (None, 4)),)
    s = ModelServer()
    s.add("m", runner, version="1")
    assert s.predict("m", {"x": [[0, 1, 2, 255]]})["y"].dtype == np.uint8
    with pytest.raises(BadRequest, match="expects uint8: a value is out of its range"):
        s.predict("m", {"x": [[0, 1, 2, 256]]})
    with pytest.raises(BadRequest, match="expects uint8, got float64"):
        s.predict("m", {"x": [[0.5, 1, 2, 3]]})


def test_unknown_model(server: ModelServer):
    with pytest.raises(UnknownModel, match="no model 'nope' is loaded here"):
        server.predict("nope", {"input": X})
    with pytest.raises(UnknownModel):
        server.unload("nope")
    with pytest.raises(BadRequest, match="invalid model name"):
        server.load("../evil", Path("x.onnx"), "onnxruntime", version="1")


def test_a_failed_load_leaves_the_current_version_serving(server: ModelServer, tmp_path: Path):
    (tmp_path / "bad.onnx").write_bytes(b"garbage")
    with pytest.raises(RuntimeLoadError):
        server.load("digits", tmp_path / "bad.onnx", "onnxruntime", version="2")
    assert server.version("digits") == "1"
    assert server.predict("digits", {"input": X})["output"].shape == (1, 10)


def test_swap_rollback_and_release(server: ModelServer, digits_artifacts: CompiledArtifacts):
    x = digits_artifacts.sample(2)
    v1 = server.predict("digits", x)["output"]
    server.load("digits", digits_artifacts.artifact(ARM, "tflite-fp32"), "litert", version="2")
    assert server.version("digits") == "2" and server.models()[0]["previous_version"] == "1"
    assert server.models()[0]["runtime"] == "litert"
    server.predict("digits", x)
    assert server.snapshot("digits").requests == 1  # type: ignore[union-attr]  # v2's own metrics
    previous_runner = server._slots["digits"].previous.runner  # type: ignore[union-attr]
    server.rollback("digits")
    assert server.version("digits") == "1"
    assert server._slots["digits"].current.runner is previous_runner  # not reloaded from disk
    del previous_runner
    np.testing.assert_array_equal(server.predict("digits", x)["output"], v1)
    assert server.snapshot("digits").requests == 2  # type: ignore[union-attr]  # v1's metrics carried on
    with pytest.raises(RollbackError, match="no previous version loaded"):
        server.rollback("digits")

    server.load("digits", digits_artifacts.artifact(ARM, "fp32"), "onnxruntime", version="3")
    ref = weakref.ref(server._slots["digits"].previous.runner)  # type: ignore[union-attr]
    server.release_previous("digits")
    gc.collect()
    assert ref() is None  # the old session is freed: memory goes back
    assert server.models()[0]["previous_version"] is None


def test_a_third_version_drops_the_first(server: ModelServer, digits_artifacts: CompiledArtifacts):
    first = weakref.ref(server._slots["digits"].current.runner)
    server.load("digits", digits_artifacts.artifact(ARM, "fp32"), "onnxruntime", version="2")
    server.load("digits", digits_artifacts.artifact(ARM, "tflite-fp32"), "litert", version="3")
    gc.collect()
    assert first() is None
    assert server.models()[0]["previous_version"] == "2"


def test_unload_and_close(server: ModelServer, digits_artifacts: CompiledArtifacts):
    server.load("other", digits_artifacts.artifact(ARM, "fp32"), "onnxruntime", version="1")
    server.unload("digits")
    assert "digits" not in server and len(server) == 1
    runner = server._slots["other"].current.runner
    server.close()
    assert len(server) == 0
    with pytest.raises(InferenceError, match="is closed"):
        runner.run({"input": X})


def test_runtime_failures_count_as_errors(fake_runner):
    def boom(_: dict) -> dict:
        raise InferenceError("kernel failed")

    s = ModelServer()
    s.add("m", fake_runner(boom), version="1")
    with pytest.raises(InferenceError, match="kernel failed"):
        s.predict("m", {"x": np.zeros((1, 4), np.float32)})
    snap = s.snapshot("m")
    assert snap is not None and snap.requests == 1 and snap.errors == 1


def test_concurrent_requests_during_swaps_all_succeed(server: ModelServer, digits_artifacts: CompiledArtifacts):
    artifacts = [(digits_artifacts.artifact(ARM, v), rt) for v, rt in
                 (("fp32", "onnxruntime"), ("tflite-fp32", "litert"), ("int8", "onnxruntime"))]
    x = digits_artifacts.sample(1)
    stop = threading.Event()
    errors: list[BaseException] = []
    served: list[str] = []

    def client() -> None:
        while not stop.is_set():
            try:
                out, version = server.predict_with_version("digits", x)
                assert out["output"].shape == (1, 10) and np.isfinite(out["output"]).all()
                served.append(version)
            except BaseException as exc:
                errors.append(exc)
                return

    threads = [threading.Thread(target=client) for _ in range(6)]
    for t in threads:
        t.start()
    try:
        for i in range(30):
            path, runtime = artifacts[i % len(artifacts)]
            server.load("digits", path, runtime, version=f"v{i}")
            if i % 4 == 3:
                server.rollback("digits")
            elif i % 5 == 4:
                server.release_previous("digits")
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert errors == []
    assert len(set(served)) > 1  # requests really ran across swaps


# --- MQTT request/response ------------------------------------------------------------------------

def test_mqtt_json_request(server: ModelServer):
    body, ctype = handle_mqtt_infer(server, "digits", json.dumps({"inputs": {"input": X.tolist()}}).encode(), JSON)
    assert ctype == JSON
    doc = json.loads(body)
    assert doc["model"] == "digits" and doc["version"] == "1"
    np.testing.assert_allclose(doc["outputs"]["output"], server.predict("digits", {"input": X})["output"], rtol=1e-6)
    # No content type at all means JSON too (a plain mosquitto_pub).
    assert handle_mqtt_infer(server, "digits", json.dumps({"inputs": {"input": X.tolist()}}).encode(), None)[1] == JSON


def test_mqtt_npz_and_npy_requests(server: ModelServer):
    body, ctype = handle_mqtt_infer(server, "digits", encode_npz({"input": X}), NPZ)
    assert ctype == NPZ and decode_npz(body)["output"].shape == (1, 10)
    body, ctype = handle_mqtt_infer(server, "digits", encode_npy(X), f"{NPY}; charset=binary")
    assert ctype == NPY and np.load(__import__("io").BytesIO(body)).shape == (1, 10)


@pytest.mark.parametrize(("name", "payload", "ctype", "status", "message"), [
    ("nope", b"{}", JSON, 404, "no model 'nope'"),
    ("digits", b"{not json", JSON, 400, "the body is not valid JSON"),
    ("digits", b'{"input": [1]}', JSON, 400, 'the JSON body must be {"inputs"'),
    ("digits", b'{"inputs": {"input": [1, 2]}}', JSON, 400, "expects shape ['N', 1, 8, 8], got [2]"),
    ("digits", b"PK\x03\x04broken", NPZ, 400, "the body is not an .npz archive"),
    ("digits", b"\x93NUMPY broken", NPY, 400, "the body is not an .npy array"),
    ("digits", b"a,b", "text/csv", 415, "unsupported content type 'text/csv'"),
])
def test_mqtt_errors_are_json_never_exceptions(server: ModelServer, name, payload, ctype, status, message):
    body, out_type = handle_mqtt_infer(server, name, payload, ctype)
    doc = json.loads(body)
    assert out_type == JSON and doc["status"] == status and message in doc["error"]


def test_mqtt_internal_errors_do_not_leak(fake_runner):
    def boom(_: dict) -> dict:
        raise ZeroDivisionError("secret detail")

    s = ModelServer()
    s.add("m", fake_runner(boom), version="1")
    body, _ = handle_mqtt_infer(s, "m", json.dumps({"inputs": {"x": [[1, 2, 3, 4]]}}).encode(), JSON)
    doc = json.loads(body)
    assert doc["status"] == 500 and "secret" not in doc["error"] and "ZeroDivisionError" in doc["error"]


def test_npz_bombs_are_refused_before_decompressing():
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("input.npy", b"\0" * (2 << 20))
    with pytest.raises(BadRequest, match="expands to more than 1 MiB"):
        decode_npz(buf.getvalue(), max_decoded=1 << 20)
