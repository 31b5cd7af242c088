"""Scale: N simulated devices, each with its own MQTT connection, against one controller.

    .venv/bin/python -m benchmarks.bench_scale [--devices 1000] [--quick] [--no-rollout] [--trials 20]
                                               [--artifact-mb 5] [--telemetry-s 10] [--profile]
                                               [--installers 64]

Real processes on this machine: Mosquitto (tests/mosquitto.py, saving its sessions at the default
interval rather than the tests' every second), the controller (``edgectl fleet serve``, SQLite
store) and the devices in ``benchmarks/_simfleet.py`` processes (at most 5,000 a process, one
MQTT 5 connection each; see there for what a simulated device does and leaves out: the agent's
real fetch and verify path, no probe, no runtime; installs share ``--installers`` threads a
process). Measured, in this order:

    start-up    from starting the device processes until every device is connected (the
                simulators' count), online in the store, and reporting (its telemetry stored)
    ingest      over a window: heartbeats the controller received (its /metrics) ÷ heartbeats
                sent (the simulators' count) = the ratio; the controller's, the broker's and the
                simulators' CPU (% of one core, psutil user+system ÷ wall)
    rollout     deploy a signed ``--artifact-mb`` MB artifact (the digits int8 variant padded, so
                it is no longer a loadable model) to every device (replicas = N); time until
                every placement reports serving. Baseline in the same run: one device alone
                fetching and verifying the same file (a real ``ChunkFetcher`` on ``MqttTransport``)
                before the fleet starts; ratios against it and against N of it back to back
    failover    a 1-replica deployment of the small digits model; per trial the device serving
                it drops (socket shut without DISCONNECT: the broker sends its will) and the time
                until another device reports serving it is taken from this process's clock,
                while every device keeps heartbeating; p50/p99/max over ``--trials``

``--profile`` samples the controller and the first simulator with py-spy (``pip install
py-spy``; put it on PATH or set PY_SPY) during the rollout (or ingest with ``--no-rollout``) and
prints the functions with the most samples at the top of the stack.

``--quick``: 5 failover trials, 10 s ingest window.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import IO, Any

import psutil

from benchmarks.bench_ingest import cpu_s, quantile, scrape
from edge_agent.config import FetchConfig
from edge_agent.fetch import ChunkFetcher
from edge_agent.verify import load_trusted_keys
from edgectl.hashing import sha256_file
from edgectl.manifest import attach_signature, dumps
from edgectl.signing import load_private_key
from edgectl.transport.mqtt import MqttSettings, MqttTransport
from fleet.artifacts import ArtifactStore
from fleet.controller_proc import ControllerProcess
from fleet.model import DeploymentSpec
from fleet.ops import deploy, publish_dir
from fleet.store import open_store
from fleet.up_build import TARGET, ModelBuild
from tests.mosquitto import Mosquitto, free_port

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / ".cache" / "bench_scale"
PER_PROCESS = 5000
GOAL_STARTUP_S = 60.0
GOAL_ROLLOUT_S = 60.0


def raise_fd_limit(need: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(soft, need)
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return int(want)


def big_version(src: Path, dst: Path, key: Path, mb: float) -> Path:
    """The compile output with its int8 file padded to ``mb`` MB, re-signed: a new version."""
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)
    folder = dst / TARGET
    manifest = json.loads((folder / "manifest.json").read_text())
    name = next(f for f in manifest["files"] if f.endswith(".int8.onnx"))
    path = folder / name
    with path.open("ab") as fh:
        fh.write(random.Random(0).randbytes(max(0, int(mb * (1 << 20)) - path.stat().st_size)))
    manifest["files"][name] = sha256_file(path)
    for v in manifest["variants"]:
        if v.get("file") == name:
            v.setdefault("fidelity", {})["size_bytes"] = path.stat().st_size
    manifest["toolchain"]["release"] = f"bench-scale-{mb:g}mb"
    (folder / "manifest.json").write_bytes(dumps(attach_signature(manifest, load_private_key(key))))
    return dst


class Sims:
    """The simulator processes and their latest stats line each."""

    def __init__(self, n: int, port: int, data: Path, trusted: Path, telemetry_s: float, window: int,
                 fetch_timeout: float, installers: int) -> None:
        self.n = n
        self.procs: list[subprocess.Popen[str]] = []
        self.stats: list[dict[str, Any]] = []
        self.logs: list[IO[str]] = []
        count = math.ceil(n / PER_PROCESS)
        for k in range(count):
            first, size = k * PER_PROCESS, min(PER_PROCESS, n - k * PER_PROCESS)
            err = (data / f"sim-{k}.log").open("w")
            self.logs.append(err)
            proc = subprocess.Popen(
                [sys.executable, "-m", "benchmarks._simfleet", "--port", str(port), "--first", str(first),
                 "--count", str(size), "--data", str(data), "--trusted", str(trusted), "--telemetry-s",
                 str(telemetry_s), "--window", str(window), "--fetch-timeout", str(fetch_timeout),
                 "--installers", str(installers)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True, cwd=REPO)
            self.procs.append(proc)
            self.stats.append({})
            threading.Thread(target=self._read, args=(k, proc), daemon=True).start()

    def _read(self, k: int, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            with contextlib.suppress(ValueError):
                self.stats[k] = json.loads(line)

    def total(self, key: str) -> int:
        return sum(int(s.get(key) or 0) for s in self.stats)

    def send(self, device: str, cmd: str) -> None:
        k = int(device.split("-")[1]) // PER_PROCESS
        proc = self.procs[k]
        assert proc.stdin is not None
        proc.stdin.write(f"{cmd} {device}\n")
        proc.stdin.flush()

    def stop(self) -> None:
        for p in self.procs:
            try:
                assert p.stdin is not None
                p.stdin.write("quit\n")
                p.stdin.flush()
            except (OSError, ValueError):
                pass
        for p in self.procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for f in self.logs:
            f.close()


class Db:
    """Read-only counts straight from the controller's SQLite file (cheap at 10k devices)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def one(self, sql: str, *args: Any) -> Any:
        con = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=10)
        try:
            return con.execute(sql, args).fetchone()
        finally:
            con.close()

    def online(self) -> int:
        return int(self.one("SELECT count(*) FROM devices WHERE online")[0])

    def reporting(self) -> int:
        return int(self.one("SELECT count(*) FROM devices WHERE online AND telemetry_ts > 0")[0])

    def serving(self, deployment: str) -> int:
        return int(self.one("SELECT count(*) FROM placements WHERE deployment = ? AND state = 'serving'",
                            deployment)[0])

    def placed_on(self, deployment: str) -> list[tuple[str, str]]:
        con = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=10)
        try:
            return [(r[0], r[1]) for r in con.execute(
                "SELECT device, state FROM placements WHERE deployment = ?", (deployment,))]
        finally:
            con.close()


def wait(what: str, check: Any, timeout: float, every: float = 0.2) -> float | None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            if check():
                return time.monotonic() - t0
        except sqlite3.OperationalError:
            pass
        time.sleep(every)
    print(f"  timed out after {timeout:g} s waiting for {what}", flush=True)
    return None


def single_fetch(url: str, sha: str, tmp: Path) -> float:
    """Baseline: one device alone fetches and verifies the file (real transport and fetcher)."""
    t = MqttTransport(MqttSettings(url=url, client_id="edgectl-agent-baseline"))
    f = ChunkFetcher(t, "baseline", tmp / "partial", FetchConfig())
    f.start()
    t.start()
    try:
        if not t.wait_connected(10):
            raise RuntimeError("baseline fetcher could not connect")
        t0 = time.perf_counter()
        f.fetch(sha, tmp / "file")
        return time.perf_counter() - t0
    finally:
        t.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def py_spy_top(pid: int, seconds: float, out: Path, top: int = 10) -> list[str]:
    exe = os.environ.get("PY_SPY") or shutil.which("py-spy")
    if exe is None:
        return ["py-spy not found (pip install py-spy, or set PY_SPY)"]
    subprocess.run([exe, "record", "-p", str(pid), "-d", str(int(seconds)), "-r", "50", "--format", "raw",
                    "-o", str(out), "--nonblocking"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   check=False)
    leaf: Counter[str] = Counter()
    total = 0
    if out.exists():
        for line in out.read_text().splitlines():
            stack, _, n = line.rpartition(" ")
            if not n.isdigit():
                continue
            frames = stack.split(";")
            total += int(n)
            leaf[frames[-1]] += int(n)
    return [f"{100 * n / max(1, total):5.1f} %  {name}" for name, n in leaf.most_common(top)]


class Cpu:
    def __init__(self, procs: dict[str, psutil.Process]) -> None:
        self.procs = procs
        self.t0 = time.monotonic()
        self.c0 = {k: cpu_s(p) for k, p in procs.items()}

    def percent(self) -> dict[str, float]:
        wall = time.monotonic() - self.t0
        return {k: round(100 * (cpu_s(p) - self.c0[k]) / wall, 1) for k, p in self.procs.items()}


def _since(t0: float, waited: float | None) -> float | None:
    return None if waited is None else round(time.monotonic() - t0, 2)


def _s(seconds: float | None) -> str:
    return "NOT" if seconds is None else f"{seconds:.1f} s"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-rollout", action="store_true")
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--artifact-mb", type=float, default=5.0)
    ap.add_argument("--telemetry-s", type=float, default=10.0)
    ap.add_argument("--window", type=int, default=16, help="the devices' chunk window (agent default 16)")
    ap.add_argument("--fetch-timeout", type=float, default=10.0, help="per chunk (agent default 10 s)")
    ap.add_argument("--installers", type=int, default=64,
                    help="install threads per simulator process (see benchmarks/_simfleet.py)")
    ap.add_argument("--ingest-s", type=float, default=30.0)
    ap.add_argument("--rollout-timeout", type=float, default=300.0)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = ap.parse_args()
    n = args.devices
    trials = 5 if args.quick else args.trials
    ingest_s = 10.0 if args.quick else args.ingest_s
    limit = raise_fd_limit(n + 1000)
    print(f"bench_scale: {n} devices, open-file limit {limit}, {os.cpu_count()} CPUs", flush=True)
    if limit < min(n, PER_PROCESS) + 500:
        sys.exit(f"the open-file limit {limit} is too low for {n} devices")

    CACHE.mkdir(parents=True, exist_ok=True)
    build = ModelBuild(CACHE)
    built = build.run()
    tmp = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    # The tests' broker saves its persistence file every second (so a broker kill in a test loses
    # little); with 1,000 devices fetching at once that file holds every queued chunk reply
    # (700 MB seen) and rewriting it each second stalled Mosquitto, its acks and the rollout.
    # Here it saves at Mosquitto's default interval, as a production broker would.
    broker = Mosquitto(tmp / "mosquitto", extra_conf="max_connections -1\nautosave_interval 1800\n")
    ctl: ControllerProcess | None = None
    sims: Sims | None = None
    results: dict[str, Any] = {"devices": n}
    try:
        broker.start()
        big = big_version(built.folder, tmp / "big", build.key, args.artifact_mb)
        http_port = free_port()
        cfg = tmp / "controller" / "fleet.toml"
        cfg.parent.mkdir()
        cfg.write_text(
            f'broker_url = "{broker.url}"\nstore_url = "fleet.db"\nartifact_dir = "artifacts"\n'
            f'trusted_keys = ["{build.public_key}"]\nhttp_port = {http_port}\n'
            f"heartbeat_timeout_s = {3 * args.telemetry_s + 10:g}\nreconcile_interval_s = 1.0\n"
            "[scheduler]\nmax_cpu_percent = 100\n[overload]\ncpu_percent = 100\n")
        store = open_store(str(cfg.parent / "fleet.db"))
        trusted = load_trusted_keys((build.public_key,))
        artifacts = ArtifactStore(cfg.parent / "artifacts")
        small = publish_dir(store, artifacts, built.folder, trusted)
        large = publish_dir(store, artifacts, big, trusted)
        big_manifest = json.loads((big / TARGET / "manifest.json").read_text())
        big_sha = next(v for k, v in big_manifest["files"].items() if k.endswith(".int8.onnx"))
        ctl = ControllerProcess(cfg, http_port=http_port, log_path=tmp / "controller" / "controller.log")
        ctl.start()
        db = Db(cfg.parent / "fleet.db")

        base_s = single_fetch(broker.url, big_sha, tmp / "baseline")
        mb_s = args.artifact_mb / base_s
        print(f"baseline: one device alone fetches + verifies {args.artifact_mb:g} MB in {base_s:.2f} s "
              f"({mb_s:.1f} MB/s)", flush=True)
        results["baseline_fetch_s"] = round(base_s, 2)

        # --- start-up ---
        data = tmp / "devices"
        data.mkdir()
        t0 = time.monotonic()
        sims = Sims(n, broker.port, data, build.public_key, args.telemetry_s, args.window, args.fetch_timeout,
                    args.installers)
        s = sims
        assert broker.proc is not None
        procs = {"controller": psutil.Process(ctl.pid), "broker": psutil.Process(broker.proc.pid)}
        for k, p in enumerate(s.procs):
            procs[f"sim{k}"] = psutil.Process(p.pid)
        cpu = Cpu(procs)
        timeout = max(120.0, n / 20)
        # Each from the start of the device processes (the waits run one after the other).
        t_conn = _since(t0, wait("every device connected", lambda: s.total("connected") >= n, timeout))
        t_online = _since(t0, wait("every device online in the store", lambda: db.online() >= n, timeout))
        t_rep = _since(t0, wait("every device reporting", lambda: db.reporting() >= n,
                                timeout + 2 * args.telemetry_s))
        startup_cpu = cpu.percent()
        wall = time.monotonic() - t0
        results["startup"] = {"connected_s": t_conn, "online_s": t_online, "reporting_s": t_rep,
                              "cpu_percent": startup_cpu}
        verdict = "PASS" if t_rep is not None and t_rep <= GOAL_STARTUP_S else "MISS"
        print(f"start-up: connected {_s(t_conn)} · online in the store {_s(t_online)} · reporting {_s(t_rep)} "
              f"({verdict}: goal {GOAL_STARTUP_S:g} s); CPU over {wall:.0f} s: {startup_cpu}", flush=True)

        # --- ingest ---
        time.sleep(2)
        m0, sent0, cpu = scrape(http_port), s.total("telemetry"), Cpu(procs)
        if args.profile and args.no_rollout:  # the docstring's promise: ingest is what there is to profile
            assert ctl.pid is not None
            ingest_top = py_spy_top(ctl.pid, ingest_s, tmp / "controller-ingest.spy")
        else:
            time.sleep(ingest_s)
            ingest_top = []
        m1, sent1, ingest_cpu = scrape(http_port), s.total("telemetry"), cpu.percent()
        got = m1["edgectl_messages_total"] - m0["edgectl_messages_total"]
        sent = sent1 - sent0
        results["ingest"] = {"window_s": ingest_s, "sent_per_s": round(sent / ingest_s, 1),
                             "received_per_s": round(got / ingest_s, 1), "cpu_percent": ingest_cpu}
        print(f"ingest: {sent / ingest_s:.0f} heartbeats/s sent, controller received {got / ingest_s:.0f} msg/s "
              f"(ratio {got / max(1, sent):.2f}); CPU % of one core: {ingest_cpu}", flush=True)
        if ingest_top:
            print("  py-spy, controller during ingest (top of stack, share of samples):")
            for ln in ingest_top:
                print(f"    {ln}")

        # --- rollout ---
        if not args.no_rollout:
            deploy(store, DeploymentSpec("rollout", large.name, large.version, replicas=n, strategy="spread",
                                         precisions=("int8",)))
            t0 = time.monotonic()
            cpu = Cpu(procs)
            prof: list[threading.Thread] = []
            tops: dict[str, list[str]] = {}
            if args.profile:
                for name, pid in (("controller", ctl.pid), ("sim0", s.procs[0].pid)):
                    def run(name: str = name, pid: int | None = pid) -> None:
                        assert pid is not None
                        tops[name] = py_spy_top(pid, 15, tmp / f"{name}.spy")
                    th = threading.Thread(target=run, daemon=True)
                    th.start()
                    prof.append(th)
            last = [0.0]

            def progress() -> bool:
                k = db.serving("rollout")
                if time.monotonic() - last[0] >= 5:
                    last[0] = time.monotonic()
                    print(f"  {time.monotonic() - t0:5.0f} s: {k} serving, {s.total('installed')} installed, "
                          f"{s.total('install_failed')} failed, {s.total('resent')} chunk requests re-sent, "
                          f"{s.total('bytes') >> 20} MB", flush=True)
                return k >= n

            done = wait("every device serving the rollout", progress, args.rollout_timeout, every=0.5)
            rollout_cpu = cpu.percent()
            serving = db.serving("rollout")
            total_mb = serving * args.artifact_mb
            took = done or (time.monotonic() - t0)
            results["rollout"] = {"seconds": done, "serving": serving, "cpu_percent": rollout_cpu,
                                  "install_failed": s.total("install_failed"), "chunks_resent": s.total("resent"),
                                  "vs_single": round(took / base_s, 1), "vs_serial": round(took / (n * base_s), 3)}
            verdict = "PASS" if done is not None and done <= GOAL_ROLLOUT_S else "MISS"
            print(f"rollout: {args.artifact_mb:g} MB to {serving}/{n} devices in {took:.1f} s ({verdict}: goal "
                  f"{GOAL_ROLLOUT_S:g} s) = {total_mb / took:.1f} MB/s; ratio {took / base_s:.1f}x one device "
                  f"alone, {took / (n * base_s):.3f}x {n} of it back to back; installs failed "
                  f"{s.total('install_failed')}, chunk requests re-sent {s.total('resent')}; CPU: {rollout_cpu}",
                  flush=True)
            for th in prof:
                th.join(30)
            for name, lines in tops.items():
                print(f"  py-spy, {name} (top of stack, share of samples):")
                for ln in lines:
                    print(f"    {ln}")

        # --- failover ---
        deploy(store, DeploymentSpec("failover", small.name, small.version, replicas=1, precisions=("int8",)))
        wait("the failover deployment serving", lambda: db.serving("failover") >= 1, 120)
        times = []
        for trial in range(trials):
            placed = [d for d, st in db.placed_on("failover") if st == "serving"]
            if not placed:
                wait("the failover deployment serving", lambda: db.serving("failover") >= 1, 60)
                placed = [d for d, st in db.placed_on("failover") if st == "serving"]
            victim = placed[0]
            t0 = time.monotonic()
            s.send(victim, "kill")
            took_f = wait(f"trial {trial}: another device serving",
                          lambda v=victim: any(d != v and st == "serving" for d, st in db.placed_on("failover")),
                          60, every=0.02)
            if took_f is not None:
                times.append(took_f)
            s.send(victim, "revive")
            time.sleep(1)
        if times:
            results["failover"] = {"trials": len(times), "p50_s": round(quantile(times, 0.5), 2),
                                   "p99_s": round(quantile(times, 0.99), 2), "max_s": round(max(times), 2)}
            print(f"failover under load ({n} devices heartbeating): {len(times)}/{trials} trials, p50 "
                  f"{quantile(times, 0.5):.2f} s, p99 {quantile(times, 0.99):.2f} s, max {max(times):.2f} s",
                  flush=True)
        errs = [st.get("error") for st in s.stats if st.get("error")]
        if errs:
            print(f"  last simulator error: {errs[-1]}")
        print(json.dumps(results))
    finally:
        if sims is not None:
            sims.stop()
        if ctl is not None:
            ctl.stop()
        broker.stop()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"kept {tmp}")


if __name__ == "__main__":
    main()
