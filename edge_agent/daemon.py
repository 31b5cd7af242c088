"""The agent daemon: wires transport, reconciler, server, telemetry and the HTTP API together.

    transport thread ──► desired ──► Reconciler.set_desired ──► worker thread: step()
                    ──► infer requests ──► a small pool ──► ModelServer.predict ──► reply
    telemetry thread ──► every interval: resources + per-model metrics ──► publish, or buffer
    on (re)connect ──► retained state (online + capabilities), then buffered reports/telemetry

Start-up serves the last good models from disk before the network is touched, so a device
without a broker keeps answering on HTTP::

    agent = Agent(load_config(Path("agent.toml")))
    agent.start()
    ...
    agent.stop()          # publishes "offline", disconnects, joins its threads
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import edge_agent
from edge_agent.buffer import TelemetryBuffer
from edge_agent.capabilities import detect_capabilities
from edge_agent.config import AgentConfig
from edge_agent.fetch import ChunkFetcher
from edge_agent.http_api import HttpApi
from edge_agent.probe import probe as run_probe
from edge_agent.reconcile import Prober, ReconcileDeps, Reconciler
from edge_agent.serving import ModelServer, handle_mqtt_infer
from edge_agent.store import InstallStore
from edge_agent.telemetry import ResourceSampler, telemetry_message
from edge_agent.verify import load_trusted_key_bytes
from edgectl import wire
from edgectl.transport.base import Message, Transport, TransportError, Will

log = logging.getLogger(__name__)
MAX_PENDING_REPORTS = 1000


def state_message(device_id: str, online: bool, caps: dict[str, Any] | None) -> bytes:
    body: dict[str, Any] = {"device": device_id, "online": online, "ts": time.time()}
    if caps is not None:
        body["capabilities"] = caps
    return wire.encode("state", body)


def mqtt_transport(cfg: AgentConfig) -> Transport:
    from edgectl.transport.mqtt import MqttSettings, MqttTransport

    b = cfg.broker
    will = Will(wire.state_topic(cfg.device_id), state_message(cfg.device_id, False, None), qos=1, retain=True)
    return MqttTransport(MqttSettings(
        url=b.url, client_id=f"edgectl-agent-{cfg.device_id}", username=b.username, password=b.password,
        tls_ca=b.tls_ca, tls_cert=b.tls_cert, tls_key=b.tls_key, keepalive=b.keepalive_s, will=will,
    ))


class Agent:
    def __init__(self, cfg: AgentConfig, *, transport: Transport | None = None, probe: Prober | None = None) -> None:
        self.cfg = cfg
        self.device_id = cfg.device_id
        self.store = InstallStore(cfg.data_dir)
        self.caps = detect_capabilities(
            data_dir=cfg.data_dir, labels=dict(cfg.labels), agent_version=edge_agent.__version__,
            memory_budget_bytes=cfg.memory_budget_bytes,
        )
        self.transport = transport if transport is not None else mqtt_transport(cfg)
        self.server = ModelServer()
        self.fetcher = ChunkFetcher(self.transport, cfg.device_id, self.store.partial, cfg.fetch)
        self.reconciler = Reconciler(ReconcileDeps(
            store=self.store, fetcher=self.fetcher, server=self.server, probe=probe or run_probe, caps=self.caps,
            trusted=load_trusted_key_bytes(cfg.trusted_keys), report=self._report, allow_unsigned=cfg.allow_unsigned,
            memory_budget_bytes=cfg.memory_budget_bytes,
        ))
        self.sampler = ResourceSampler(cfg.data_dir)
        self.telemetry = TelemetryBuffer()
        self.http = HttpApi(self.server, cfg.http.host, cfg.http.port, health=self.health) if cfg.http.enabled else None
        self._pending: deque[bytes] = deque(maxlen=MAX_PENDING_REPORTS)
        self._pending_lock = threading.Lock()
        self._stop = threading.Event()
        self._connected_event = threading.Event()
        self._threads: list[threading.Thread] = []
        self._infer_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="infer")
        self.dropped_messages = 0

    # --- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        self.reconciler.restore()
        if self.http is not None:
            self.http.start()
        self.transport.add_connection_listener(self._on_connection)
        self.transport.subscribe(wire.desired_topic(self.device_id), self._on_desired)
        self.transport.subscribe(wire.infer_topic(self.device_id, "+"), self._on_infer)
        self.fetcher.start()
        self.transport.start()
        for name, target in (("reconcile", self._reconcile_loop), ("telemetry", self._telemetry_loop)):
            t = threading.Thread(target=target, name=f"agent-{name}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        self.reconciler.wake.set()
        self._connected_event.set()
        if self.transport.connected:
            with contextlib.suppress(TransportError):
                self.transport.publish(wire.state_topic(self.device_id),
                                       state_message(self.device_id, False, None), retain=True, timeout=2.0)
        for t in self._threads:
            t.join(timeout=10)
        self._infer_pool.shutdown(wait=False, cancel_futures=True)
        self.transport.stop()
        if self.http is not None:
            self.http.stop()
        self.server.close()

    def crash(self) -> None:
        """Stop as a crash would, for fault injection in one process (``edgectl up --chaos``): the
        connection drops without a goodbye (the broker publishes the last will), nothing is saved
        or published, threads are told to stop and not waited for long. The data dir is left as
        it was, so a new ``Agent`` on it restores what a restarted process would."""
        self._stop.set()
        self.reconciler.interrupt()
        self._connected_event.set()
        kill = getattr(self.transport, "kill", None)
        if callable(kill):
            kill()
        else:
            self.transport.stop()
        if self.http is not None:
            self.http.stop()
        self._infer_pool.shutdown(wait=False, cancel_futures=True)
        for t in self._threads:
            t.join(timeout=2)
        self.server.close()

    def health(self) -> dict[str, Any]:
        return {"device": self.device_id, "connected": self.transport.connected,
                "generation": self.reconciler.state.generation}

    # --- transport callbacks (transport thread: keep them short) -----------------------------
    def _on_connection(self, connected: bool) -> None:
        if connected:
            self._connected_event.set()  # the telemetry thread announces and flushes
        else:
            self._connected_event.clear()

    def _on_desired(self, msg: Message) -> None:
        if not msg.payload:
            return  # retained message cleared
        try:
            desired = wire.parse_desired(msg.payload)
        except wire.WireError as exc:
            self.dropped_messages += 1
            log.warning("desired state dropped: %s", exc)
            return
        self.reconciler.set_desired(desired)  # wakes the reconcile thread when it is news

    def _on_infer(self, msg: Message) -> None:
        parts = msg.topic.split("/")
        name = parts[-2] if len(parts) >= 2 else ""
        if not msg.response_topic or not wire.valid_name(name):
            self.dropped_messages += 1
            log.warning("inference request on %s without a response topic dropped", msg.topic)
            return
        self._infer_pool.submit(self._infer, name, msg)

    def _infer(self, name: str, msg: Message) -> None:
        payload, ctype = handle_mqtt_infer(self.server, name, msg.payload, msg.content_type)
        assert msg.response_topic is not None
        try:
            self.transport.publish(msg.response_topic, payload, qos=1, correlation_data=msg.correlation_data,
                                   content_type=ctype)
        except TransportError as exc:
            log.warning("inference reply for %s not sent: %s", name, exc)

    # --- reports -----------------------------------------------------------------------------
    def _report(self, deployment: str, state: str, manifest_sha: str | None, reason: str | None) -> None:
        log.info("%s %s %s%s", deployment, state, (manifest_sha or "")[:12], f": {reason}" if reason else "")
        body = wire.report_message(self.device_id, deployment, state, manifest_sha256=manifest_sha,
                                   generation=self.reconciler.applied_generation, reason=reason, ts=time.time())
        with self._pending_lock:
            self._pending.append(body)
        self._flush_reports()

    def _flush_reports(self) -> None:
        with self._pending_lock:
            while self._pending and self.transport.connected:
                try:
                    self.transport.publish(wire.report_topic(self.device_id), self._pending[0], qos=1)
                except TransportError:
                    return
                self._pending.popleft()

    # --- threads -----------------------------------------------------------------------------
    def _reconcile_loop(self) -> None:
        while not self._stop.is_set():
            self.reconciler.wake.wait(self.cfg.tick_s)
            self.reconciler.wake.clear()
            if self._stop.is_set():
                return
            try:
                self.reconciler.step()
            except Exception:  # the loop must outlive any bug in one step
                log.exception("reconcile step failed")

    def _announce(self) -> None:
        self.transport.publish(wire.state_topic(self.device_id), state_message(self.device_id, True, self.caps),
                               retain=True)
        self._flush_reports()
        topic = wire.telemetry_topic(self.device_id)

        def send(payload: bytes) -> bool:
            self.transport.publish(topic, payload, qos=1)
            return True

        # A failed publish raises out of drain and leaves the unsent messages in the buffer.
        self.telemetry.drain(send)

    def _telemetry_loop(self) -> None:
        announced = False
        next_at = time.monotonic()
        while not self._stop.is_set():
            if self._connected_event.is_set() and not announced:
                try:
                    self._announce()
                    announced = True
                except TransportError as exc:
                    log.info("announce failed (%s); will retry", exc)
            if not self.transport.connected:
                announced = False
            if time.monotonic() >= next_at:
                next_at += self.cfg.telemetry_interval_s
                self._send_telemetry()
            self._stop.wait(max(0.0, min(next_at - time.monotonic(), 0.5)))

    def _send_telemetry(self) -> None:
        models = {}
        for name, ds in self.reconciler.state.deployments.items():
            snap = self.server.snapshot(name)
            if snap is None or ds.current is None:
                continue
            models[name] = {**snap.to_dict(), "memory_bytes": ds.memory_bytes,
                            "manifest_sha256": ds.current.manifest_sha256, "variant": ds.current.variant}
        payload = telemetry_message(self.device_id, self.sampler.sample(), models,
                                    dropped=self.telemetry.dropped, ts=time.time())
        if self.transport.connected and not len(self.telemetry):
            try:
                self.transport.publish(wire.telemetry_topic(self.device_id), payload, qos=1)
                return
            except TransportError:
                pass
        self.telemetry.append(payload)
