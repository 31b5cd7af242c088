"""Many simulated devices in one process, each with its own MQTT 5 connection (for bench_scale).

    python -m benchmarks._simfleet --port 1883 --first 0 --count 5000 --data /tmp/sim --trusted key.pub

What a simulated device does, and what it leaves out: it connects (MQTT 5, persistent session,
last will, like the agent's ``MqttTransport``), subscribes to its desired-state topic, announces
itself with a retained online state and capabilities of an x86-64 AVX2 box, and sends the agent's
telemetry message every ``--telemetry-s``. On a desired state naming an artifact it has not got,
it runs the agent's real fetch and verify path on a thread of its own: ``edge_agent.fetch.
ChunkFetcher`` (chunked, windowed, per-chunk sha256, resumable) for the manifest, the manifest's
signature and hash check (``edge_agent.verify.check_manifest``), the variant file's fetch and its
sha256 (``check_file``), reporting downloading → verifying → serving as the agent does. Left out:
the probe child process, loading a runtime and serving; the files are deleted once verified.

All connections share one network thread (paho's external-loop API over a selector) instead of
the agent transport's two threads each, so 10,000 fit in one process. Installs run on a pool of
``--installers`` threads (default 64) rather than one thread per device: with all 1,000 devices
told at once, 1,000 fetch threads fighting over one GIL starved the network thread and the
whole simulator stalled (no chunk request left it for a minute). A device whose install waits
for a pool thread has not reported ``downloading`` yet; its wait counts in the rollout time.

Control on stdin, one command a line: ``kill ID`` (drop the socket, no DISCONNECT: the broker
sends the will), ``revive ID`` (connect again), ``quit``. Every second a JSON line on stdout:
connected, telemetry sent, installs done/failed, bytes fetched.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import selectors
import shutil
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_agent.config import FetchConfig
from edge_agent.fetch import ChunkFetcher
from edge_agent.telemetry import telemetry_message
from edge_agent.verify import check_file, check_manifest, load_trusted_key_bytes
from edgectl import wire
from edgectl.errors import EdgectlError
from edgectl.transport.base import Message, TransportOffline

GB = 1 << 30


def device_id(i: int) -> str:
    return f"sim-{i:05d}"


def capabilities(i: int) -> dict[str, Any]:
    return {
        "arch": "x86_64", "machine": "x86_64", "isa": ["sse4.2", "avx", "avx2", "fma", "f16c"],
        "cpu_model": "Intel(R) Core(TM) i5-8500T CPU @ 2.10GHz", "cpu_count": 6,
        "runtimes": {"onnxruntime": "1.20.0"}, "accelerators": [], "memory_total_bytes": 16 * GB,
        "memory_budget_bytes": None, "disk_total_bytes": 64 * GB, "disk_free_bytes": 40 * GB,
        "labels": {"zone": f"z{i % 8}", "site": f"s{i % 50}"}, "agent_version": "0.1.0",
    }


def resources(i: int) -> dict[str, Any]:
    return {"cpu_percent": 12.5, "memory_total_bytes": 16 * GB, "memory_available_bytes": 9 * GB,
            "disk_free_bytes": 40 * GB, "disk_total_bytes": 64 * GB, "rss_bytes": 38 << 20}


class Mux:
    """One selector for every paho client; paho's socket callbacks register and unregister."""

    def __init__(self) -> None:
        self.sel = selectors.DefaultSelector()
        self._changes: queue.SimpleQueue[tuple[str, Any, Any]] = queue.SimpleQueue()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.sel.register(self._wake_r, selectors.EVENT_READ, None)
        self.clients: list[SimDevice] = []
        self.stop = threading.Event()

    def change(self, op: str, sock: Any, dev: Any) -> None:
        self._changes.put((op, sock, dev))
        with contextlib.suppress(BlockingIOError, OSError):
            self._wake_w.send(b"x")

    def _apply(self) -> None:
        while True:
            try:
                op, sock, dev = self._changes.get_nowait()
            except queue.Empty:
                return
            try:
                if op == "open":
                    self.sel.register(sock, selectors.EVENT_READ, dev)
                elif op == "close":
                    self.sel.unregister(sock)
                elif op == "write":
                    self.sel.modify(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, dev)
                elif op == "nowrite":
                    self.sel.modify(sock, selectors.EVENT_READ, dev)
            except (KeyError, ValueError, OSError):
                pass

    def run(self) -> None:
        last_misc = 0.0
        while not self.stop.is_set():
            self._apply()
            for key, mask in self.sel.select(0.2):
                dev = key.data
                if dev is None:
                    with contextlib.suppress(OSError):
                        self._wake_r.recv(65536)
                    continue
                if mask & selectors.EVENT_READ:
                    dev.client.loop_read()
                if mask & selectors.EVENT_WRITE:
                    dev.client.loop_write()
                    if not dev.client.want_write():
                        # paho's register/unregister callbacks come from several threads and can
                        # arrive out of order: the selector is corrected here, on its own thread.
                        with contextlib.suppress(KeyError, ValueError, OSError):
                            self.sel.modify(key.fileobj, selectors.EVENT_READ, dev)
            now = time.monotonic()
            if now - last_misc >= 1.0:
                last_misc = now
                for dev in self.clients:
                    dev.client.loop_misc()
                    if dev.want_connect and now >= dev.retry_at:
                        dev.connect()


class SimDevice:
    """One device: its paho client, and the ``Transport`` face ChunkFetcher needs."""

    def __init__(self, fleet: SimFleet, index: int) -> None:
        self.fleet = fleet
        self.index = index
        self.device_id = self.client_id = device_id(index)
        self.handlers: dict[str, Any] = {}
        self.listeners: list[Any] = []
        self._connected = threading.Event()
        self.want_connect = True
        self.retry_at = 0.0
        self.installed: set[str] = set()
        self.installing: set[str] = set()
        self.generation = -1
        c = self.client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=self.client_id,
                                      protocol=paho.MQTTv5, reconnect_on_failure=False)
        c.max_inflight_messages_set(0)
        c.max_queued_messages_set(0)
        will = wire.encode("state", {"device": self.device_id, "online": False, "ts": time.time()})
        c.will_set(wire.state_topic(self.device_id), will, qos=1, retain=True)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        mux = fleet.mux
        c.on_socket_open = lambda cl, ud, sock: mux.change("open", sock, self)
        c.on_socket_close = lambda cl, ud, sock: mux.change("close", sock, self)
        c.on_socket_register_write = lambda cl, ud, sock: mux.change("write", sock, self)
        c.on_socket_unregister_write = lambda cl, ud, sock: mux.change("nowrite", sock, self)
        self.fetcher = ChunkFetcher(self, self.device_id, fleet.data / self.device_id / "partial", fleet.fetch_cfg)
        self.fetcher.start()

    # --- the Transport protocol, as far as ChunkFetcher uses it ---
    def start(self) -> None:
        self.connect()

    def stop(self) -> None:
        self.kill()

    def unsubscribe(self, topic_filter: str) -> None:
        self.handlers.pop(topic_filter, None)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def subscribe(self, topic_filter: str, handler: Any, *, qos: int = 1) -> None:
        self.handlers[topic_filter] = handler

    def add_connection_listener(self, listener: Any) -> None:
        self.listeners.append(listener)

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False,
                response_topic: str | None = None, correlation_data: bytes | None = None,
                user_properties: tuple[tuple[str, str], ...] = (), content_type: str | None = None,
                timeout: float = 10.0) -> None:
        if not self.connected:
            raise TransportOffline(f"{self.device_id} is offline")
        props = None
        if response_topic or correlation_data:
            props = Properties(PacketTypes.PUBLISH)
            if response_topic:
                props.ResponseTopic = response_topic
            if correlation_data:
                props.CorrelationData = correlation_data
        self.client.publish(topic, payload, qos=qos, retain=retain, properties=props)

    # --- connection ---
    def connect(self) -> None:
        self.want_connect = False
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        try:
            self.client.connect(self.fleet.host, self.fleet.port, keepalive=60, clean_start=False, properties=props)
        except OSError:
            self.want_connect = True
            self.retry_at = time.monotonic() + 1.0

    def kill(self) -> None:
        sock = self.client.socket()
        self.want_connect = False
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def revive(self) -> None:
        self.want_connect = True
        self.retry_at = 0.0

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            return
        client.subscribe([(wire.desired_topic(self.device_id), 1), (wire.chunk_reply_topic(self.device_id), 1)])
        self._connected.set()
        state = wire.encode("state", {"device": self.device_id, "online": True, "ts": time.time(),
                                      "capabilities": capabilities(self.index)})
        client.publish(wire.state_topic(self.device_id), state, qos=1, retain=True)
        self.fleet.count("connects")
        for listener in self.listeners:
            listener(True)

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self._connected.clear()
        for listener in self.listeners:
            listener(False)
        if not self.fleet.killed.get(self.device_id):
            self.want_connect = True
            self.retry_at = time.monotonic() + 1.0

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        props = msg.properties
        corr = getattr(props, "CorrelationData", None) if props else None
        uprops = tuple(getattr(props, "UserProperty", None) or ()) if props else ()
        m = Message(msg.topic, msg.payload, correlation_data=corr, user_properties=uprops)
        if msg.topic == wire.chunk_reply_topic(self.device_id):
            self.fetcher._on_reply(m)
        elif msg.topic == wire.desired_topic(self.device_id) and msg.payload:
            try:
                desired = wire.parse_desired(msg.payload)
            except wire.WireError:
                return
            self.generation = desired.generation
            for dep in desired.deployments:
                if dep.manifest_sha256 in self.installed:
                    self.report(dep.name, "serving", dep.manifest_sha256)
                elif dep.manifest_sha256 not in self.installing:
                    self.installing.add(dep.manifest_sha256)
                    self.fleet.installers.submit(self.install, dep)

    # --- the agent's fetch and verify path ---
    def report(self, deployment: str, state: str, sha: str, reason: str | None = None) -> None:
        body = wire.report_message(self.device_id, deployment, state, manifest_sha256=sha,
                                   generation=self.generation, reason=reason, ts=time.time())
        with contextlib.suppress(TransportOffline):
            self.publish(wire.report_topic(self.device_id), body, qos=1)

    def install(self, dep: wire.Deployment) -> None:
        staging = self.fleet.data / self.device_id / "staging" / dep.manifest_sha256[:16]
        try:
            self.report(dep.name, "downloading", dep.manifest_sha256)
            self.fetcher.fetch(dep.manifest_sha256, staging / "manifest.json", max_bytes=dep.manifest_size)
            manifest = check_manifest((staging / "manifest.json").read_bytes(), dep.manifest_sha256,
                                      self.fleet.trusted, allow_unsigned=False)
            sha = manifest["files"][dep.variant]
            stats = self.fetcher.fetch(sha, staging / dep.variant)
            self.report(dep.name, "verifying", dep.manifest_sha256)
            check_file(staging / dep.variant, sha)
            self.installed.add(dep.manifest_sha256)
            self.fleet.count("installed")
            self.fleet.count("bytes", stats.bytes)
            self.fleet.count("resent", stats.resent)
            self.report(dep.name, "serving", dep.manifest_sha256)
        except (EdgectlError, OSError, KeyError) as exc:
            self.fleet.count("install_failed")
            self.fleet.last_error = f"{self.device_id}: {exc}"
            self.report(dep.name, "failed", dep.manifest_sha256, str(exc)[:200])
        finally:
            self.installing.discard(dep.manifest_sha256)
            shutil.rmtree(staging, ignore_errors=True)


class SimFleet:
    def __init__(self, args: argparse.Namespace) -> None:
        self.host, self.port = "127.0.0.1", args.port
        self.data = Path(args.data)
        self.trusted = load_trusted_key_bytes((Path(args.trusted),))
        self.fetch_cfg = FetchConfig(window=args.window, timeout_s=args.fetch_timeout)
        self.mux = Mux()
        self.installers = ThreadPoolExecutor(max_workers=args.installers, thread_name_prefix="install")
        self.killed: dict[str, bool] = {}
        self.counters: dict[str, int] = {}
        self._clock = threading.Lock()
        self.last_error: str | None = None
        self.devices = {device_id(i): SimDevice(self, i) for i in range(args.first, args.first + args.count)}
        self.mux.clients = list(self.devices.values())
        self.telemetry_s = args.telemetry_s

    def count(self, key: str, n: int = 1) -> None:
        with self._clock:
            self.counters[key] = self.counters.get(key, 0) + n

    def connect_all(self, rate: float) -> None:
        t0 = time.monotonic()
        for k, dev in enumerate(self.devices.values()):
            dev.connect()
            ahead = t0 + k / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)

    def telemetry_loop(self) -> None:
        devices = list(self.devices.values())
        n = len(devices)
        t0 = time.monotonic()
        k = 0
        while not self.mux.stop.is_set():
            dev = devices[k % n]
            due = t0 + k * self.telemetry_s / n
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(min(wait, 0.5))
                continue
            k += 1
            if dev.connected:
                body = telemetry_message(dev.device_id, resources(dev.index), {}, dropped=0, ts=time.time())
                with contextlib.suppress(TransportOffline):
                    dev.publish(wire.telemetry_topic(dev.device_id), body, qos=1)
                    self.count("telemetry")

    def commands(self) -> None:
        for line in sys.stdin:
            cmd, _, arg = line.strip().partition(" ")
            dev = self.devices.get(arg)
            if cmd == "kill" and dev is not None:
                self.killed[arg] = True
                dev.kill()
            elif cmd == "revive" and dev is not None:
                self.killed[arg] = False
                dev.revive()
            elif cmd == "quit":
                break
        self.mux.stop.set()

    def stats_loop(self) -> None:
        while not self.mux.stop.wait(1.0):
            connected = sum(d.connected for d in self.devices.values())
            with self._clock:
                doc = {"connected": connected, **self.counters, "error": self.last_error}
            print(json.dumps(doc), flush=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--first", type=int, default=0)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--trusted", required=True)
    p.add_argument("--telemetry-s", type=float, default=10.0)
    p.add_argument("--connect-rate", type=float, default=2000.0)
    p.add_argument("--window", type=int, default=16)
    p.add_argument("--fetch-timeout", type=float, default=10.0)
    p.add_argument("--installers", type=int, default=64, help="install threads shared by the devices")
    args = p.parse_args()
    fleet = SimFleet(args)
    for target in (fleet.mux.run, fleet.stats_loop, fleet.telemetry_loop, fleet.commands):
        threading.Thread(target=target, daemon=True).start()
    fleet.connect_all(args.connect_rate)
    fleet.mux.stop.wait()
    os._exit(0)


if __name__ == "__main__":
    main()
