"""The local HTTP API over real artifacts: formats, status codes, swaps under load, quiet logs."""

from __future__ import annotations

import http.client
import io
import json
import socket
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from edge_agent.http_api import HttpApi
from edge_agent.runtime import InferenceError
from edge_agent.serving import JSON, NPY, NPZ, ModelServer, decode_npz, encode_npy, encode_npz
from tests.artifacts import CompiledArtifacts

ARM = "arm64-cortex-a72"
X = np.zeros((1, 1, 8, 8), np.float32)


@pytest.fixture
def server(digits_artifacts: CompiledArtifacts) -> ModelServer:
    s = ModelServer(threads=1)
    s.load("digits", digits_artifacts.artifact(ARM, "int8"), "onnxruntime", version="1")
    return s


@pytest.fixture
def api(server: ModelServer) -> Iterator[HttpApi]:
    with HttpApi(server, max_body=64 << 10) as a:
        yield a


def call(api: HttpApi, method: str, path: str, body: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=10)
    try:
        conn.request(method, path, body, headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def predict_json(api: HttpApi, inputs: Any, name: str = "digits") -> tuple[int, dict[str, Any]]:
    status, _, body = call(api, "POST", f"/v1/models/{name}:predict", json.dumps({"inputs": inputs}).encode(),
                           {"Content-Type": JSON})
    return status, json.loads(body)


def test_predict_json(api: HttpApi, server: ModelServer, digits_artifacts: CompiledArtifacts):
    x = digits_artifacts.sample(2)["input"]
    status, doc = predict_json(api, {"input": x.tolist()})
    assert status == 200 and doc["model"] == "digits" and doc["version"] == "1"
    np.testing.assert_allclose(doc["outputs"]["output"], server.predict("digits", {"input": x})["output"], rtol=1e-6)


def test_predict_npy_npz_and_accept(api: HttpApi, server: ModelServer):
    expected = server.predict("digits", {"input": X})["output"]
    status, headers, body = call(api, "POST", "/v1/models/digits:predict", encode_npy(X), {"Content-Type": NPY})
    assert status == 200 and headers["content-type"] == NPY and headers["x-model-version"] == "1"
    np.testing.assert_array_equal(np.load(io.BytesIO(body)), expected)
    status, headers, body = call(api, "POST", "/v1/models/digits:predict", encode_npz({"input": X}),
                                 {"Content-Type": NPZ})
    assert status == 200 and headers["content-type"] == NPZ
    np.testing.assert_array_equal(decode_npz(body)["output"], expected)
    # Accept picks the response format whatever the request's.
    status, headers, body = call(api, "POST", "/v1/models/digits:predict", encode_npy(X),
                                 {"Content-Type": NPY, "Accept": f"text/html, {JSON};q=0.9, */*"})
    assert status == 200 and headers["content-type"] == JSON
    np.testing.assert_allclose(json.loads(body)["outputs"]["output"], expected, rtol=1e-6)
    status, headers, _ = call(api, "POST", "/v1/models/digits:predict", json.dumps({"inputs": {"input": X.tolist()}}),
                              {"Content-Type": JSON, "Accept": NPZ})
    assert status == 200 and headers["content-type"] == NPZ


def test_list_and_describe_models(api: HttpApi):
    predict_json(api, {"input": X.tolist()})
    status, _, body = call(api, "GET", "/v1/models")
    [row] = json.loads(body)["models"]
    assert status == 200 and row["name"] == "digits" and row["metrics"]["requests"] == 1
    status, _, body = call(api, "GET", "/v1/models/digits")
    assert status == 200 and json.loads(body)["version"] == "1"
    status, _, body = call(api, "GET", "/v1/models/nope")
    assert status == 404


def test_healthz_with_and_without_callback(server: ModelServer):
    with HttpApi(server) as api:
        status, _, body = call(api, "GET", "/healthz")
        assert status == 200 and json.loads(body) == {"status": "ok", "models": 1}
    with HttpApi(server, health=lambda: {"broker": "connected"}) as api:
        status, _, body = call(api, "GET", "/healthz")
        assert status == 200 and json.loads(body)["broker"] == "connected"
    with HttpApi(server, health=lambda: {"status": "degraded"}) as api:
        assert call(api, "GET", "/healthz")[0] == 503

    def broken() -> dict[str, Any]:
        raise OSError("disk gone")

    with HttpApi(server, health=broken) as api:
        status, _, body = call(api, "GET", "/healthz")
        assert status == 503 and json.loads(body)["status"] == "error"


@pytest.mark.parametrize(("method", "path", "body", "headers", "status", "message"), [
    ("POST", "/v1/models/nope:predict", b"{}", {"Content-Type": JSON}, 404, "no model 'nope'"),
    ("POST", "/v1/models/digits:predict", b"{oops", {"Content-Type": JSON}, 400, "not valid JSON"),
    ("POST", "/v1/models/digits:predict", b'{"inputs": {"input": [1]}}', {}, 400, "expects shape ['N', 1, 8, 8]"),
    ("POST", "/v1/models/digits:predict", b'{"inputs": {"pixels": [1]}}', {}, 400, "unknown input 'pixels'"),
    ("POST", "/v1/models/digits:predict", b"garbage", {"Content-Type": NPY}, 400, "not an .npy array"),
    ("POST", "/v1/models/digits:predict", b"garbage", {"Content-Type": NPZ}, 400, "not an .npz archive"),
    ("POST", "/v1/models/digits:predict", b"1,2", {"Content-Type": "text/csv"}, 415, "unsupported content type"),
    ("POST", "/v1/models/digits:predict", b"x" * (65 << 10), {}, 413, "over the 65536 byte limit"),
    ("GET", "/v1/models/digits:predict", None, {}, 405, "GET is not allowed here: use POST"),
    ("DELETE", "/v1/models", None, {}, 405, "use GET"),
    ("GET", "/v2/anything", None, {}, 404, "no such path '/v2/anything'"),
])
def test_bad_requests_get_clear_4xx(api: HttpApi, method, path, body, headers, status, message):
    got, hdrs, data = call(api, method, path, body, headers)
    doc = json.loads(data)
    assert got == status and hdrs["content-type"] == JSON
    assert doc["status"] == status and message in doc["error"]


def raw(api: HttpApi, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", api.port), timeout=10) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_a_body_needs_a_content_length(api: HttpApi):
    reply = raw(api, b"POST /v1/models/digits:predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 411") and b"send Content-Length" in reply
    reply = raw(api, b"POST /v1/models/digits:predict HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 411")
    reply = raw(api, b"POST /v1/models/digits:predict HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 400")


def test_server_errors_carry_no_traceback(fake_runner, caplog: pytest.LogCaptureFixture):
    def boom(_: dict) -> dict:
        raise KeyError("internal detail")

    def kernel(_: dict) -> dict:
        raise InferenceError("onnxruntime failed on m.onnx (Fail: bad kernel)")

    s = ModelServer()
    s.add("boom", fake_runner(boom), version="1")
    s.add("kernel", fake_runner(kernel), version="1")
    with HttpApi(s) as api:
        status, doc = predict_json(api, {"x": [[1, 2, 3, 4]]}, name="boom")
        assert status == 500 and "Traceback" not in doc["error"] and "internal detail" not in doc["error"]
        assert "internal error (KeyError)" in doc["error"]
        status, doc = predict_json(api, {"x": [[1, 2, 3, 4]]}, name="kernel")
        assert status == 500 and doc["error"] == "onnxruntime failed on m.onnx (Fail: bad kernel)"
    assert "internal detail" in caplog.text  # the detail goes to the agent's log


def test_keep_alive_connection_serves_many_requests(api: HttpApi):
    conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=10)
    body = json.dumps({"inputs": {"input": X.tolist()}})
    for _ in range(5):
        conn.request("POST", "/v1/models/digits:predict", body, {"Content-Type": JSON})
        resp = conn.getresponse()
        assert resp.status == 200
        resp.read()
    # A 4xx does not break the connection either.
    conn.request("POST", "/v1/models/nope:predict", body, {"Content-Type": JSON})
    assert conn.getresponse().read() and conn.request("GET", "/healthz") is None
    assert conn.getresponse().status == 200
    conn.close()


def test_concurrent_requests_during_swaps_all_succeed(api: HttpApi, server: ModelServer,
                                                      digits_artifacts: CompiledArtifacts):
    artifacts = [(digits_artifacts.artifact(ARM, v), r) for v, r in
                 (("tflite-fp32", "litert"), ("fp32", "onnxruntime"), ("int8", "onnxruntime"))]
    stop = threading.Event()
    failures: list[str] = []
    versions: set[str] = set()
    body = json.dumps({"inputs": {"input": X.tolist()}})

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=10)
        while not stop.is_set():
            try:
                conn.request("POST", "/v1/models/digits:predict", body, {"Content-Type": JSON})
                resp = conn.getresponse()
                data = resp.read()
                if resp.status != 200:
                    failures.append(f"{resp.status} {data[:200]!r}")
                versions.add(json.loads(data)["version"])
            except Exception as exc:
                failures.append(repr(exc))
                return
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        for i in range(12):
            path, runtime = artifacts[i % len(artifacts)]
            server.load("digits", path, runtime, version=f"v{i}")
            if i % 3 == 2:
                server.rollback("digits")
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert failures == []
    assert len(versions) > 1


def test_quiet_logging_and_clean_stop(server: ModelServer, capsys: pytest.CaptureFixture[str]):
    api = HttpApi(server).start()
    port = api.port
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/healthz")
    assert conn.getresponse().read()
    call(api, "GET", "/nope")
    api.stop()
    assert capsys.readouterr().err == ""  # http.server would print every request to stderr
    # The idle keep-alive connection was closed by stop(), and nothing listens any more.
    with pytest.raises((ConnectionError, http.client.HTTPException, OSError)):
        conn.request("GET", "/healthz")
        conn.getresponse()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2)
    api.stop()  # idempotent


def test_port_is_known_only_after_start(server: ModelServer):
    api = HttpApi(server)
    with pytest.raises(RuntimeError, match="once start"):
        _ = api.port
