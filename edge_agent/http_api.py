"""Inference over HTTP on localhost, standard library only.

    api = HttpApi(server, port=8181, health=lambda: {"broker": "connected"}).start()
    # curl -s localhost:8181/v1/models/digits:predict -d '{"inputs": {"input": [[[[0, ...]]]]}}'
    api.stop()

    POST /v1/models/{name}:predict   body: JSON {"inputs": {...}}          → JSON {"outputs": {...}}
                                           application/x-npz (by input name) → .npz
                                           application/x-npy (one input)     → .npy (one output) or .npz
                                     an Accept of one of those three picks the response format
    GET  /v1/models                  JSON list: name, version, runtime, inputs, outputs, metrics
    GET  /v1/models/{name}           the same for one model
    GET  /healthz                    200 {"status": "ok", "models": n, ...health()}; 503 when the
                                     health callback reports another status or raises

Costs (``benchmarks/bench_agent_serving.py``): a keep-alive request adds 0.3-0.7 ms over
``ModelServer.predict``, mostly http.server's header parsing. An .npy body pays a fixed ~0.1 ms
more at batch 1 (numpy parses its header with ``ast.literal_eval``, on both sides) and wins from
batch ~8 on (digits CNN, batch 64: 0.9 ms vs 6.6 ms for JSON).

Errors are JSON ``{"error": "...", "status": n}``: 400 malformed body or inputs that do not fit
the model, 404 unknown model or path, 405 wrong method, 411 no Content-Length, 413 body over
``max_body``, 415 a content type other than JSON / npz / npy, 500 runtime failure (its one-line
message; never a traceback). Request logs go to the ``edge_agent.http_api`` logger at DEBUG,
not to stderr.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

from edge_agent.serving import (
    JSON,
    NPY,
    NPZ,
    BadRequest,
    ModelServer,
    decode_inputs,
    encode_outputs,
    error_body,
    media_type,
)
from edgectl.errors import EdgectlError

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY = 16 << 20
PREDICT_SUFFIX = ":predict"
MODELS_PREFIX = "/v1/models"

Health = Callable[[], dict[str, Any]]


class _MethodNotAllowed(BadRequest):
    status = 405


class _Server(ThreadingHTTPServer):
    """Tracks open connections so ``stop`` can end keep-alive connections too."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(address, handler)
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.connections_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.connections_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # socketserver prints these tracebacks to stderr; a client that hangs up is routine.
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            log.debug("connection from %s ended: %s", client_address, exc)
        else:
            log.exception("HTTP connection from %s failed", client_address)

    def close_connections(self) -> None:
        with self.connections_lock:
            conns = list(self.connections)
        for conn in conns:
            with contextlib.suppress(OSError):  # already gone
                conn.shutdown(socket.SHUT_RDWR)


class HttpApi:
    """The agent's local HTTP API over a ``ModelServer``; see the module docstring."""

    def __init__(
        self,
        server: ModelServer,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        health: Health | None = None,
        max_body: int = DEFAULT_MAX_BODY,
    ) -> None:
        self.models = server
        self.host = host
        self.requested_port = port
        self.health = health
        self.max_body = max_body
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> HttpApi:
        """Bind and serve on a background thread; returns self (``.port`` is known from here)."""
        handler = type("Handler", (_Handler,), {"api": self})
        self._httpd = _Server((self.host, self.requested_port), handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="edge-agent-http", daemon=True)
        self._thread.start()
        log.info("HTTP API on http://%s:%d", self.host, self.port)
        return self

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("HttpApi.port is known once start() has bound the socket")
        return self._httpd.server_port

    def stop(self) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        # shutdown() waits for serve_forever to notice, which polls every 0.5 s; a connection
        # wakes its select() at once (a shorter poll would wake an idle agent 10× a second).
        stopper = threading.Thread(target=httpd.shutdown)
        stopper.start()
        while stopper.is_alive():
            with contextlib.suppress(OSError):
                socket.create_connection((self.host, httpd.server_port), timeout=1).close()
            stopper.join(0.05)
        httpd.server_close()  # the listening socket
        httpd.close_connections()  # idle keep-alive connections would otherwise wait for their timeout
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> HttpApi:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- request handling (called on the connection's thread) ---

    def health_doc(self) -> tuple[int, dict[str, Any]]:
        doc: dict[str, Any] = {"status": "ok", "models": len(self.models)}
        if self.health is not None:
            try:
                doc.update(self.health())
            except Exception as exc:  # a broken callback is an unhealthy agent, not a crashed handler
                log.exception("health callback failed")
                doc.update(status="error", error=exc.__class__.__name__)
        return (200 if doc["status"] == "ok" else 503), doc


def _response_kind(accept: str | None, request_kind: str) -> str:
    """The first of JSON / npz / npy named in Accept, else the request's own format."""
    for part in (accept or "").split(","):
        kind = media_type(part) if part.strip() else ""
        if kind in (JSON, NPZ, NPY):
            return kind
    return request_kind if request_kind in (JSON, NPZ, NPY) else JSON


class _Handler(BaseHTTPRequestHandler):
    api: HttpApi  # set on the per-HttpApi subclass
    protocol_version = "HTTP/1.1"  # keep-alive: a client reuses its connection
    server_version = "edgectl-agent"
    sys_version = ""
    timeout = 30  # seconds a connection may sit idle or trickle a request
    # Headers and body go out in two writes: without this, Nagle + delayed ACK add ~40 ms.
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def _dispatch(self, method: str) -> None:
        try:
            self._route(method, unquote(urlsplit(self.path).path))
        except BadRequest as exc:
            self._error(exc.status, str(exc))
        except EdgectlError as exc:  # a runtime failure: its one-line message, no traceback
            self._error(500, str(exc))
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client went away mid-response
        except Exception as exc:
            log.exception("HTTP %s %s failed", method, self.path)
            self._error(500, f"internal error ({exc.__class__.__name__}); the agent log has the details")

    def _route(self, method: str, path: str) -> None:
        models = self.api.models
        if path == "/healthz":
            self._only(method, "GET")
            status, doc = self.api.health_doc()
            self._json(status, doc)
        elif path in (MODELS_PREFIX, MODELS_PREFIX + "/"):
            self._only(method, "GET")
            self._json(200, {"models": models.models()})
        elif path.startswith(MODELS_PREFIX + "/") and path.endswith(PREDICT_SUFFIX):
            self._only(method, "POST")
            self._predict(path[len(MODELS_PREFIX) + 1 : -len(PREDICT_SUFFIX)])
        elif path.startswith(MODELS_PREFIX + "/"):
            self._only(method, "GET")
            name = path[len(MODELS_PREFIX) + 1 :]
            rows = [m for m in models.models() if m["name"] == name]
            if not rows:
                self._error(404, f"no model {name!r} is loaded here: GET /v1/models lists them")
            else:
                self._json(200, rows[0])
        else:
            self._error(404, f"no such path {path!r}: see /v1/models, /v1/models/NAME:predict, /healthz")

    def _only(self, method: str, allowed: str) -> None:
        if method != allowed:
            raise _MethodNotAllowed(f"{method} is not allowed here: use {allowed}")

    def _predict(self, name: str) -> None:
        body = self._body()
        if body is None:
            return  # the error has been sent
        models = self.api.models
        content_type = self.headers.get("Content-Type")
        feeds = decode_inputs(models, name, body, content_type)
        outputs, version = models.predict_with_version(name, feeds)
        kind = _response_kind(self.headers.get("Accept"), media_type(content_type))
        payload, ctype = encode_outputs(name, version, outputs, kind)
        self._send(200, payload, ctype, (("X-Model-Version", version),))

    def _body(self) -> bytes | None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            self._error(411, "chunked bodies are not supported: send Content-Length")
            return None
        length = self.headers.get("Content-Length")
        if length is None:
            self.close_connection = True
            self._error(411, "Content-Length is required")
            return None
        try:
            n = int(length)
            if n < 0:
                raise ValueError(length)
        except ValueError:
            self.close_connection = True
            self._error(400, f"bad Content-Length {length!r}")
            return None
        if n > self.api.max_body:
            # The body stays unread, so the connection cannot be reused: close it after replying.
            self.close_connection = True
            self._error(413, f"the body is {n} bytes, over the {self.api.max_body} byte limit: send smaller batches")
            return None
        body = self.rfile.read(n)
        if len(body) < n:
            self.close_connection = True
            raise BadRequest("the body ended before Content-Length bytes")
        return body

    def _json(self, status: int, doc: Any) -> None:
        import json

        self._send(status, json.dumps(doc).encode(), JSON)

    def _error(self, status: int, message: str) -> None:
        self._send(status, error_body(message, status), JSON)

    def _send(self, status: int, body: bytes, content_type: str, headers: tuple[tuple[str, str], ...] = ()) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in headers:
            self.send_header(key, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
