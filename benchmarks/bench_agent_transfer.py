"""Artifact transfer through Mosquitto on loopback, verified and on disk, against raw paho QoS 1.

    .venv/bin/python -m benchmarks.bench_agent_transfer [--size-mb 50] [--rounds 5] [--cases 256:16,...]
                                                        [--profile] [--resume-only] [--quick]

A Mosquitto broker is started on a free port (tests/mosquitto.py) and an ArtifactStore gets one
random blob of ``--size-mb`` MiB. The agent side, in this process, is a ``ChunkFetcher``
(edge_agent/fetch.py) on its own ``MqttTransport``: it fetches the blob by sha256 into a file
(sha256 checked per chunk and for the whole file, fsync, rename). The controller side, a
``ChunkServer`` (fleet/artifacts.py) on its own ``MqttTransport``, runs either

    split    in a child process, as in real life (agent and controller are separate processes)
    inproc   in this process, next to the fetcher (one GIL for both sides)

For each (chunk size, window) case the baseline is measured in the same rounds, interleaved:

    paho     a raw paho-mqtt publisher (own process for split, a thread for inproc) moves the same
             bytes as messages of the chunk size at QoS 1, at most ``window`` unacknowledged, to a
             raw paho subscriber in this process: no requests, no hashing, no disk

Printed per case and mode: MB/s (1 MB = 10^6 bytes; medians over ``--rounds``), ratio = fetch /
paho, CPU seconds per transfer of this process, the controller child and the broker, and
PASS/MISS against the goal: ≥ 150 MB/s for the default case (256 KiB × 16) split.

Then the resume case (split, default chunk and window): the broker is stopped (SIGTERM, sessions
saved) once 40 % of the file is on disk and started again on the same port ``--outage`` seconds
later; printed are the wall time of the whole transfer, outage included, the requests the fetcher
re-sent, and whether the file's sha256 is right. (The broker's config names the current user:
Mosquitto started as root otherwise drops to user ``mosquitto``, cannot write its persistence file
in our temp folder, and comes back with no sessions.) The transports' warnings while the broker is
down are printed as ``log:`` lines.

``--quick`` (an 8 MiB artifact, 1 round) checks that everything runs; it does not judge the goal.

``--profile`` (automatic on a MISS) repeats one split transfer with cProfile on every thread of
this process (the fetch loop, the transport's network and dispatcher threads) and prints where the
time goes, after the CPU seconds per thread measured without the profiler.
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import io
import logging
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import psutil
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.config import FetchConfig
from edge_agent.fetch import ChunkFetcher, FetchStats
from edgectl.transport.mqtt import MqttSettings, MqttTransport
from fleet.artifacts import ArtifactStore, ChunkServer
from tests.mosquitto import Mosquitto

REPO = Path(__file__).resolve().parent.parent
MB = 1e6
GOAL_MB_S = 150.0
DEFAULT_CASES = "256:16,512:16,1024:8"  # chunk KiB:window; the first is the agent's default config
CASES: tuple[tuple[int, int], ...] = ()  # (chunk bytes, window), from --cases
DEVICE = "bench-dev"


def _connect(t: MqttTransport) -> MqttTransport:
    t.start()
    if not t.wait_connected(10):
        raise SystemExit(f"{t.client_id} did not connect: {t.last_error}")
    return t


def _host_port(url: str) -> tuple[str, int]:
    host, port = url.rsplit("/", 1)[1].split(":")
    return host, int(port)


# --- the baseline: raw paho ------------------------------------------------------------------------

class PahoPublisher:
    """paho with loop_start(); publishes QoS 1 with at most ``window`` messages unacknowledged."""

    def __init__(self, url: str, client_id: str) -> None:
        self.client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=paho.MQTTv5)
        self.acked = 0
        self._cond = threading.Condition()
        self.client.on_publish = self._on_publish
        self.client.max_inflight_messages_set(64)  # ≥ every window: send() bounds what is unacked
        self.client.connect(*_host_port(url))
        self.client.loop_start()
        deadline = time.monotonic() + 10
        while not self.client.is_connected():
            if time.monotonic() > deadline:
                raise SystemExit("paho publisher did not connect")
            time.sleep(0.01)

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        with self._cond:
            self.acked += 1
            self._cond.notify()

    def send(self, topic: str, n: int, payload: bytes, window: int) -> None:
        with self._cond:
            self.acked = 0
        for sent in range(n):
            with self._cond:
                while sent - self.acked >= window:
                    if not self._cond.wait(60):
                        raise SystemExit(f"paho publisher: no PUBACK in 60 s ({self.acked} of {sent} acked)")
            self.client.publish(topic, payload, qos=1)
        with self._cond:
            self._cond.wait_for(lambda: self.acked >= n, 60)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class PahoSink:
    """A raw paho subscriber on ``bench/#``: sets ``done`` when a topic has its expected bytes."""

    def __init__(self, url: str) -> None:
        self.client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="bench-sink",
                                  protocol=paho.MQTTv5)
        self.expect: tuple[str, int] = ("", 0)
        self.got = 0
        self.done = threading.Event()
        subscribed = threading.Event()
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.on_connect = lambda c, *_: c.subscribe("bench/#", qos=1)
        self.client.connect(*_host_port(url))
        self.client.loop_start()
        if not subscribed.wait(10):
            raise SystemExit("paho subscriber did not subscribe")

    def arm(self, topic: str, total: int) -> None:
        self.expect, self.got = (topic, total), 0
        self.done.clear()

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        if msg.topic == self.expect[0]:
            self.got += len(msg.payload)
            if self.got >= self.expect[1]:
                self.done.set()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# --- child processes ---------------------------------------------------------------------------------

def controller_child(url: str, root: str) -> None:
    """A ChunkServer on its own transport. stdin: "start" / "stop" (its subscription); EOF ends it."""
    t = MqttTransport(MqttSettings(url=url, client_id="bench-controller"))
    server = ChunkServer(t, ArtifactStore(Path(root)))
    _connect(t)
    print("ready", flush=True)
    for line in sys.stdin:
        {"start": server.start, "stop": server.stop}[line.strip()]()
        print("ok", flush=True)
    t.stop()


def publisher_child(url: str) -> None:
    """The baseline publisher. stdin: "<topic> <n> <size> <window>" per run; EOF ends it."""
    pub = PahoPublisher(url, "bench-publisher")
    print("ready", flush=True)
    payloads: dict[int, bytes] = {}
    for line in sys.stdin:
        topic, n, size, window = line.split()
        payload = payloads.setdefault(int(size), os.urandom(int(size)))
        pub.send(topic, int(n), payload, int(window))
        print("ok", flush=True)
    pub.close()


class Child:
    """One of the children above, driven by lines on stdin."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "benchmarks.bench_agent_transfer", "--child", *args],
                                     cwd=REPO, text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.ps = psutil.Process(self.proc.pid)
        if (line := self._line()) != "ready":
            raise SystemExit(f"child {args[0]} did not start: {line!r}")

    def _line(self) -> str:
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().strip()

    def send(self, line: str) -> None:
        """Write a command; ``wait`` reads its "ok"."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def wait(self) -> None:
        if (line := self._line()) != "ok":
            raise SystemExit(f"child answered {line!r}")

    def call(self, line: str) -> None:
        self.send(line)
        self.wait()

    def cpu(self) -> float:
        c = self.ps.cpu_times()
        return c.user + c.system

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(20)


# --- the rig -------------------------------------------------------------------------------------------

@dataclass
class Run:
    seconds: float
    cpu: dict[str, float]  # process → CPU seconds during the run
    stats: FetchStats | None = None


@dataclass
class Rig:
    broker: Mosquitto
    work: Path
    size: int
    sha: str
    agent: MqttTransport
    controller: Child  # split mode's ChunkServer
    local_server: ChunkServer  # inproc mode's, on its own transport in this process
    publisher: Child
    local_publisher: PahoPublisher
    sink: PahoSink
    fetchers: dict[tuple[int, int], ChunkFetcher] = field(default_factory=dict)
    serving: str = ""

    @property
    def dest(self) -> Path:
        return self.work / "dest" / "model.bin"

    def fetcher(self, chunk: int, window: int) -> ChunkFetcher:
        key = (chunk, window)
        if key not in self.fetchers:
            self.fetchers[key] = ChunkFetcher(self.agent, DEVICE, self.work / "partial",
                                              FetchConfig(chunk_bytes=chunk, window=window))
        f = self.fetchers[key]
        f.start()  # routes the reply topic to this fetcher
        return f

    def serve(self, mode: str) -> None:
        """Exactly one ChunkServer subscribed: the shared subscription would split requests."""
        if mode == self.serving:
            return
        if self.serving == "split":
            self.controller.call("stop")
        elif self.serving == "inproc":
            self.local_server.stop()
        if mode == "split":
            self.controller.call("start")
        else:
            self.local_server.start()
        self.serving = mode

    def cpu(self) -> dict[str, float]:
        me = psutil.Process().cpu_times()
        assert self.broker.proc is not None
        b = psutil.Process(self.broker.proc.pid).cpu_times()
        return {"agent": me.user + me.system, "controller": self.controller.cpu() + self.publisher.cpu(),
                "broker": b.user + b.system}

    def fetch(self, mode: str, chunk: int, window: int,
              on_progress: Callable[[int, int], None] | None = None) -> Run:
        self.serve(mode)
        fetcher = self.fetcher(chunk, window)
        self.dest.unlink(missing_ok=True)
        c0, t0 = self.cpu(), time.perf_counter()
        stats = fetcher.fetch(self.sha, self.dest, on_progress=on_progress)
        dt, c1 = time.perf_counter() - t0, self.cpu()
        return Run(dt, {k: c1[k] - c0[k] for k in c0}, stats)

    def paho(self, mode: str, chunk: int, window: int, tag: str) -> Run:
        n = -(-self.size // chunk)
        topic = f"bench/{mode}/{chunk}/{window}/{tag}"
        self.sink.arm(topic, n * chunk)
        c0, t0 = self.cpu(), time.perf_counter()
        if mode == "split":
            self.publisher.send(f"{topic} {n} {chunk} {window}")
            deadline = time.monotonic() + 120
            while not (delivered := self.sink.done.wait(0.2)) and time.monotonic() < deadline:
                if self.publisher.proc.poll() is not None:
                    raise SystemExit(f"the publisher child exited with {self.publisher.proc.returncode}")
            self.publisher.wait()
        else:
            payload = os.urandom(chunk)
            t0 = time.perf_counter()  # os.urandom is not the broker's work
            th = threading.Thread(target=self.local_publisher.send, args=(topic, n, payload, window))
            th.start()
            delivered = self.sink.done.wait(120)
            th.join()
        dt, c1 = time.perf_counter() - t0, self.cpu()
        if not delivered:
            raise SystemExit(f"baseline {mode} {chunk}×{window}: the subscriber got {self.sink.got} of {n * chunk} B")
        return Run(dt, {k: c1[k] - c0[k] for k in c0})


def make_rig(work: Path, size: int) -> Rig:
    broker = Mosquitto(work / "mosquitto")  # its config names the current user, so sessions persist
    broker.start()
    store = ArtifactStore(work / "store")
    blob = work / "blob.bin"
    with blob.open("wb") as out:
        left = size
        while left:
            out.write(os.urandom(min(left, 1 << 20)))
            left -= min(left, 1 << 20)
    sha = store.put_file(blob)
    blob.unlink()
    agent = MqttTransport(MqttSettings(url=broker.url, client_id=f"edgectl-agent-{DEVICE}"))
    _connect(agent)
    local = _connect(MqttTransport(MqttSettings(url=broker.url, client_id="bench-controller-local")))
    return Rig(broker=broker, work=work, size=size, sha=sha, agent=agent, controller=Child("controller", broker.url,
               str(store.root)), local_server=ChunkServer(local, store), publisher=Child("publisher", broker.url),
               local_publisher=PahoPublisher(broker.url, "bench-publisher-local"), sink=PahoSink(broker.url))


def close_rig(rig: Rig) -> None:
    for close in (rig.controller.close, rig.publisher.close, rig.local_publisher.close, rig.sink.close,
                  rig.local_server.transport.stop, rig.agent.stop, rig.broker.stop):
        try:
            close()
        except Exception as exc:  # keep tearing down
            print(f"teardown: {exc}", file=sys.stderr)


# --- measurements ----------------------------------------------------------------------------------------

Key = tuple[int, int, str, str]  # chunk, window, mode, path ("fetch" / "paho")


def measure(rig: Rig, rounds: int, modes: tuple[str, ...]) -> dict[Key, list[Run]]:
    runs: dict[Key, list[Run]] = {}
    for r in range(rounds):  # interleaved: drift on a shared machine hits every path alike
        for chunk, window in CASES:
            for mode in modes:
                for path in ("paho", "fetch"):
                    run = rig.paho(mode, chunk, window, f"r{r}") if path == "paho" else rig.fetch(mode, chunk, window)
                    runs.setdefault((chunk, window, mode, path), []).append(run)
                    print(f"round {r} {chunk >> 10} KiB × {window} {mode} {path}: "
                          f"{rig.size / run.seconds / MB:.0f} MB/s", flush=True)
    return runs


def med_cpu(runs: list[Run], who: str) -> float:
    return statistics.median(r.cpu[who] for r in runs)


def print_table(rig: Rig, runs: dict[Key, list[Run]], modes: tuple[str, ...]) -> float:
    """Prints the MB/s table; returns the default case's split (or first mode's) fetch MB/s."""
    print(f"\n{rig.size / 2**20:.0f} MiB artifact, MB/s = 10^6 B/s, medians of {len(next(iter(runs.values())))} "
          "interleaved rounds; CPU s per transfer: agent = this process, ctl = controller or publisher child, "
          "broker = mosquitto")
    print("chunk | window | mode | fetch MB/s | paho MB/s | ratio | fetch CPU agent/ctl/broker | "
          "paho CPU sub/pub/broker")
    headline = 0.0
    for chunk, window in CASES:
        for mode in modes:
            f, p = runs[(chunk, window, mode, "fetch")], runs[(chunk, window, mode, "paho")]
            fr = rig.size / statistics.median(r.seconds for r in f) / MB
            pr = rig.size / statistics.median(r.seconds for r in p) / MB
            if (chunk, window) == CASES[0] and (mode == "split" or not headline):
                headline = fr
            cpu_f = "/".join(f"{med_cpu(f, w):.2f}" for w in ("agent", "controller", "broker"))
            cpu_p = "/".join(f"{med_cpu(p, w):.2f}" for w in ("agent", "controller", "broker"))
            print(f"{chunk >> 10} KiB | {window} | {mode} | {fr:.0f} | {pr:.0f} | {fr / pr:.2f} | {cpu_f} | {cpu_p}")
    print("ratio = fetch / paho (higher is better); in inproc mode the controller's and the publisher's CPU is in "
          "the agent column")
    return headline


def resume(rig: Rig, outage: float, normal_s: float) -> None:
    """Stop the broker at 40 %, start it again ``outage`` s later; the fetch keeps going in-process."""
    chunk, window = CASES[0]
    marks: dict[str, float] = {}
    outage_thread: list[threading.Thread] = []

    def bounce() -> None:
        rig.broker.stop()
        marks["down"] = time.perf_counter()
        time.sleep(outage)
        rig.broker.start()
        marks["up"] = time.perf_counter()

    def on_progress(done: int, total: int) -> None:
        if not outage_thread and done >= 0.4 * total:
            marks["stop"], marks["at"] = time.perf_counter(), done
            outage_thread.append(threading.Thread(target=bounce, daemon=True))
            outage_thread[0].start()

    rig.serve("split")
    t0 = time.perf_counter()
    try:
        run = rig.fetch("split", chunk, window, on_progress=on_progress)
        error = ""
    except Exception as exc:  # report it with the rest
        run, error = None, f"{type(exc).__name__}: {exc}"
    end = time.perf_counter()
    if outage_thread:
        outage_thread[0].join(30)
    ok = rig.dest.exists() and hashlib.sha256(rig.dest.read_bytes()).hexdigest() == rig.sha
    print(f"\nresume: {chunk >> 10} KiB × {window}, split; broker stopped at {marks.get('at', 0) / rig.size:.0%} "
          f"({marks.get('at', 0) / 2**20:.1f} MiB), started again {outage:.1f} s after it was down")
    print("total s | normal s | broker down s | broker up → done s | extra s | resent | corrupt | chunks | sha256")
    if run is None or run.stats is None:
        print(f"FAILED after {end - t0:.2f} s: {error}")
        return
    s = run.stats
    down = marks.get("up", end) - marks.get("stop", end)
    after = end - marks.get("up", end)
    print(f"{run.seconds:.2f} | {normal_s:.2f} | {down:.2f} | {after:.2f} | {run.seconds - normal_s - down:+.2f} | "
          f"{s.resent} | {s.corrupt} | {s.chunks} | {'ok' if ok else 'WRONG'}")
    print("extra = total − normal − broker down: the time lost to reconnecting and to waiting for lost chunks")


# --- profile -------------------------------------------------------------------------------------------

def thread_cpu() -> dict[str, float]:
    names = {t.native_id: t.name for t in threading.enumerate()}
    return {names.get(t.id, f"tid {t.id}"): t.user_time + t.system_time for t in psutil.Process().threads()}


def profile(rig: Rig, top: int) -> None:
    """CPU per thread for one plain split transfer, then the same under cProfile on every thread."""
    chunk, window = CASES[0]
    c0 = thread_cpu()
    run = rig.fetch("split", chunk, window)
    c1 = thread_cpu()
    print(f"\nprofile: {chunk >> 10} KiB × {window}, split — CPU s per thread of this process during one plain "
          f"transfer of {run.seconds:.2f} s (controller child {run.cpu['controller']:.2f} s, broker "
          f"{run.cpu['broker']:.2f} s):")
    for name, sec in sorted(((n, c1[n] - c0.get(n, 0.0)) for n in c1), key=lambda kv: -kv[1]):
        if sec >= 0.005:
            print(f"  {name}: {sec:.2f} s ({sec / run.seconds:.0%} of a core)")

    # A fresh agent transport whose threads run under cProfile (Thread.run patched while it starts).
    profiles: dict[str, cProfile.Profile] = {}
    original = threading.Thread.run

    def profiled_run(self: threading.Thread) -> None:
        prof = profiles[self.name] = cProfile.Profile()
        prof.enable()
        try:
            original(self)
        finally:
            prof.disable()

    agent = MqttTransport(MqttSettings(url=rig.broker.url, client_id=f"edgectl-agent-{DEVICE}-prof"))
    fetcher = ChunkFetcher(agent, f"{DEVICE}-prof", rig.work / "partial-prof", FetchConfig(chunk, window))
    fetcher.start()
    threading.Thread.run = profiled_run  # type: ignore[method-assign]
    try:
        _connect(agent)
    finally:
        threading.Thread.run = original  # type: ignore[method-assign]
    main = profiles["fetch (main thread)"] = cProfile.Profile()
    dest = rig.work / "dest" / "prof.bin"
    t0 = time.perf_counter()
    main.enable()
    fetcher.fetch(rig.sha, dest)
    main.disable()
    seconds = time.perf_counter() - t0
    agent.stop()
    dest.unlink(missing_ok=True)
    print(f"\ncProfile, every thread of this process (transfer took {seconds:.2f} s under the profiler); "
          f"top {top} by own time:")
    for name, prof in profiles.items():
        out = io.StringIO()
        st = pstats.Stats(prof, stream=out)
        st.sort_stats("tottime").print_stats(top)
        total = sum(v[2] for v in st.stats.values())  # type: ignore[attr-defined]
        print(f"\n--- thread {name}: {total:.2f} s profiled")
        lines = out.getvalue().splitlines()
        start = next((i for i, ln in enumerate(lines) if ln.lstrip().startswith("ncalls")), 0)
        print("\n".join(ln for ln in lines[start:] if ln.strip()))


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=50, help="artifact size, MiB")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--modes", default="split,inproc", help="split (controller in a child), inproc, or both")
    parser.add_argument("--outage", type=float, default=1.0, help="seconds the broker stays down in the resume case")
    parser.add_argument("--profile", action="store_true", help="always print the per-thread profile")
    parser.add_argument("--top", type=int, default=15, help="functions per thread in the profile")
    parser.add_argument("--cases", default=DEFAULT_CASES, help="chunk KiB:window, comma-separated; the first is "
                        "the goal's case and the one used for the resume case and the profile")
    parser.add_argument("--resume-only", action="store_true", help="skip the throughput table")
    parser.add_argument("--quick", action="store_true", help="an 8 MiB artifact, 1 round")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    # The transports' reconnect warnings during the resume case, marked as log lines.
    logging.basicConfig(level=logging.WARNING, format="  log: %(message)s")
    if args.child:
        if args.child[0] == "controller":
            controller_child(args.child[1], args.child[2])
        else:
            publisher_child(args.child[1])
        return
    if args.quick:
        args.size_mb, args.rounds = 8, 1
    global CASES
    CASES = tuple((int(c) << 10, int(w)) for c, w in (case.split(":") for case in args.cases.split(",")))
    modes = tuple(m for m in args.modes.split(",") if m)

    with tempfile.TemporaryDirectory() as tmp:
        rig = make_rig(Path(tmp), args.size_mb << 20)
        try:
            rig.fetch(modes[0], *CASES[0])  # warm-up: page cache, first-call costs
            if args.resume_only:
                normal = statistics.median(rig.fetch("split", *CASES[0]).seconds for _ in range(3))
                resume(rig, args.outage, normal)
                return
            rig.paho(modes[0], *CASES[0], "warm")
            runs = measure(rig, args.rounds, modes)
            headline = print_table(rig, runs, modes)
            mode = "split" if "split" in modes else modes[0]
            verdict = "PASS" if headline >= GOAL_MB_S else "MISS"
            if args.quick:
                verdict = "not judged with --quick (small artifact, 1 round)"
            print(f"goal: fetch ≥ {GOAL_MB_S:.0f} MB/s at {CASES[0][0] >> 10} KiB × {CASES[0][1]} ({mode}): "
                  f"{headline:.0f} MB/s — {verdict}")
            normal = statistics.median(r.seconds for r in runs[(*CASES[0], "split", "fetch")]) \
                if "split" in modes else 0.0
            if "split" in modes:
                resume(rig, args.outage, normal)
            if "split" in modes and (args.profile or verdict == "MISS"):
                profile(rig, args.top)
        finally:
            close_rig(rig)


if __name__ == "__main__":
    main()
