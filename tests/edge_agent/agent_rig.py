"""A controller's side for agent tests: an artifact store, a chunk server, desired-state and report
helpers, on any transport (the in-memory broker or a real Mosquitto)."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgectl import wire
from edgectl.transport.base import Message, Transport
from fleet.artifacts import ArtifactRef, ArtifactStore, ChunkServer


@dataclass
class ControllerSide:
    transport: Transport
    store: ArtifactStore
    device_id: str
    server: ChunkServer = field(init=False)
    reports: queue.Queue[dict[str, Any]] = field(default_factory=queue.Queue)
    seen: list[dict[str, Any]] = field(default_factory=list)
    telemetry: list[dict[str, Any]] = field(default_factory=list)
    states: list[dict[str, Any]] = field(default_factory=list)
    generation: int = 0

    server_class: type[ChunkServer] = ChunkServer

    def __post_init__(self) -> None:
        self.server = self.server_class(self.transport, self.store)
        self.server.start()
        self.transport.subscribe(wire.report_topic(self.device_id), self._on_report)
        self.transport.subscribe(wire.telemetry_topic(self.device_id),
                                 lambda m: self.telemetry.append(json.loads(m.payload)))
        self.transport.subscribe(wire.state_topic(self.device_id), self._on_state)

    def _on_report(self, msg: Message) -> None:
        self.reports.put(json.loads(msg.payload))

    def _on_state(self, msg: Message) -> None:
        if msg.payload:
            self.states.append(json.loads(msg.payload))

    def publish(self, folder: Path) -> ArtifactRef:
        return self.store.put_dir(folder)

    def desire(self, *deployments: wire.Deployment, generation: int | None = None) -> None:
        self.generation = self.generation + 1 if generation is None else generation
        payload = wire.desired_message(wire.Desired(self.generation, tuple(deployments)))
        self.transport.publish(wire.desired_topic(self.device_id), payload, retain=True)

    def wait_for(self, deployment: str, state: str, timeout: float = 60.0) -> dict[str, Any]:
        """The next report of ``state`` for ``deployment``; every report is kept in ``seen``."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {state!r} report for {deployment} in {timeout} s; saw {self.trail()}")
            try:
                rep = self.reports.get(timeout=remaining)
            except queue.Empty:
                continue
            self.seen.append(rep)
            if rep["deployment"] == deployment and rep["state"] == state:
                return rep

    def trail(self, deployment: str | None = None) -> list[str]:
        return [r["state"] for r in self.seen if deployment is None or r["deployment"] == deployment]


def deployment(name: str, ref: ArtifactRef, variant_file: str, **guard: float) -> wire.Deployment:
    return wire.Deployment(name, ref.manifest_sha256, ref.manifest_size, variant_file, wire.Guard(**guard))


def install_digits(controller: ControllerSide, agent: AgentProcess, artifacts: Any, target: str = "x86_64-avx2") -> None:
    """Publish the digits int8 artifact for ``target``, start ``agent``, deploy it as "digits" and
    wait until it serves, through every install state, with the agent's HTTP API up."""
    ref = controller.publish(artifacts.folder(target))
    agent.start()
    controller.desire(deployment("digits", ref, artifacts.variant(target, "int8")["file"]))
    controller.wait_for("digits", "serving")
    assert controller.trail("digits") == ["downloading", "verifying", "installing", "loaded", "serving"]
    agent.wait_http()


def http_json(port: int, method: str, path: str, body: bytes | None = None, timeout: float = 5.0) -> tuple[int, Any]:
    """One request to an agent's local HTTP API: (status, decoded JSON body), errors included."""
    import urllib.error
    import urllib.request

    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


class AgentProcess:
    """The real agent daemon in its own process (``python -m edge_agent``), for kill -9 tests."""

    def __init__(self, tmp_path: Path, device_id: str, broker_url: str, public_key: Path, *,
                 chunk_kb: int = 256, window: int = 16, http_port: int | None = None, extra: str = "") -> None:
        from tests.mosquitto import free_port

        self.device_id = device_id
        self.dir = tmp_path / f"agent-{device_id}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.data_dir = self.dir / "data"
        self.http_port = http_port or free_port()
        self.config = self.dir / "agent.toml"
        self.config.write_text(
            f'device_id = "{device_id}"\ndata_dir = "{self.data_dir}"\ntrusted_keys = ["{public_key}"]\n'
            f"telemetry_interval_s = 0.5\ntick_s = 0.1\n{extra}\n"
            f'[broker]\nurl = "{broker_url}"\nkeepalive_s = 5\n'
            f'[http]\nport = {self.http_port}\n'
            f"[fetch]\nchunk_kb = {chunk_kb}\nwindow = {window}\ntimeout_s = 2\n"
        )
        self.log = self.dir / "agent.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> AgentProcess:
        import os
        import sys

        self.starts += 1
        with self.log.open("ab") as log:
            log.write(f"--- start {self.starts} ---\n".encode())
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "edge_agent", "--config", str(self.config), "--log-level", "DEBUG"],
                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        return self

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(20)

    def http(self, method: str, path: str, body: bytes | None = None, timeout: float = 5.0) -> tuple[int, Any]:
        return http_json(self.http_port, method, path, body, timeout)

    def wait_http(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc is not None and self.proc.poll() is None, self.log.read_text()[-3000:]
            try:
                if self.http("GET", "/healthz", timeout=1.0)[0] in (200, 503):
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"agent HTTP not up in {timeout} s:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.05)

    def predict(self, inputs: dict[str, Any]) -> tuple[int, Any]:
        body = json.dumps({"inputs": {k: v.tolist() for k, v in inputs.items()}}).encode()
        return self.http("POST", "/v1/models/digits:predict", body)


class SlowChunkServer(ChunkServer):
    """A chunk server that waits before each reply: a slow link, so tests can act mid-transfer."""

    delay_s = 0.05

    def _reply(self, msg: Message, payload: bytes, props: tuple[tuple[str, str], ...]) -> None:
        time.sleep(self.delay_s)
        super()._reply(msg, payload, props)
