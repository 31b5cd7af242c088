"""The controller's HTTP API: ``GET /v1/status`` (what `edgectl fleet status --json` prints),
``GET /healthz`` and Prometheus ``GET /metrics``. Read-only; changes go through the store
(`edgectl fleet deploy` and friends)::

    http = FleetHttp(controller, "127.0.0.1", 8480).start()
    http.port
    http.stop()
"""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from fleet.ops import status

if TYPE_CHECKING:
    from fleet.controller import Controller

log = logging.getLogger(__name__)


def metrics_text(ctl: Controller) -> str:
    st = status(ctl.store)
    c = ctl.counters
    lines = [
        "# HELP edgectl_devices Devices known to the controller, by online state.",
        "# TYPE edgectl_devices gauge",
        f'edgectl_devices{{state="online"}} {sum(d["online"] for d in st["devices"])}',
        f'edgectl_devices{{state="offline"}} {sum(not d["online"] for d in st["devices"])}',
        "# HELP edgectl_deployment_replicas Replicas of each deployment by state.",
        "# TYPE edgectl_deployment_replicas gauge",
    ]
    for d in st["deployments"]:
        desired = d["desired"] if isinstance(d["desired"], int) else d["placed"]
        for key, value in (("desired", desired), ("running", d["running"]), ("failed", d["failed"]),
                           ("pending", d["pending"])):
            lines.append(f'edgectl_deployment_replicas{{deployment="{d["name"]}",state="{key}"}} {value}')
    for name, help_, value, kind in (
        ("edgectl_messages_total", "MQTT messages received from devices.", c.messages, "counter"),
        ("edgectl_messages_dropped_total", "Malformed or invalid messages dropped.", c.dropped, "counter"),
        ("edgectl_reconcile_passes_total", "Reconcile passes run.", c.passes, "counter"),
        ("edgectl_scheduling_decisions_total", "Replicas placed by the scheduler.", c.decisions, "counter"),
        ("edgectl_unplaced_replicas_total", "Replicas the scheduler could not place.", c.unplaced, "counter"),
        ("edgectl_desired_published_total", "Desired-state messages published.", c.desired_published, "counter"),
        ("edgectl_reconcile_last_seconds", "Duration of the last reconcile pass.", c.last_pass_s, "gauge"),
        ("edgectl_chunks_served_total", "Artifact chunks served.", ctl.chunks.served, "counter"),
    ):
        lines += [f"# HELP {name} {help_}", f"# TYPE {name} {kind}", f"{name} {value}"]
    return "\n".join(lines) + "\n"


class FleetHttp:
    def __init__(self, ctl: Controller, host: str = "127.0.0.1", port: int = 8480) -> None:
        ctl_ref = ctl

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, fmt: str, *args: Any) -> None:
                log.debug("http: " + fmt, *args)

            def _send(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                try:
                    if self.path == "/metrics":
                        self._send(200, metrics_text(ctl_ref).encode(), "text/plain; version=0.0.4")
                    elif self.path == "/v1/status":
                        self._send(200, json.dumps(status(ctl_ref.store)).encode(), "application/json")
                    elif self.path == "/healthz":
                        ok = ctl_ref.transport.connected
                        self._send(200 if ok else 503, json.dumps({"broker_connected": ok}).encode(),
                                   "application/json")
                    else:
                        self._send(404, b'{"error": "not found: try /v1/status or /metrics"}', "application/json")
                except Exception as exc:  # one line to the client; the log has the rest
                    log.exception("HTTP %s failed", self.path)
                    self._send(500, json.dumps({"error": exc.__class__.__name__}).encode(), "application/json")

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fleet-http", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> FleetHttp:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
