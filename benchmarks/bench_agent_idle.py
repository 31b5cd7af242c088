"""Idle memory of the real agent process (connected, no model loaded) against bare Python + paho.

    .venv/bin/python -m benchmarks.bench_agent_idle [--rounds 3] [--imports] [--quick]

A Mosquitto broker is started on a free port (tests/mosquitto.py). Each round runs four
processes, one after the other (two processes that map the same library would each leave it out
of their USS), each with its own device id, temp data dir and ``agent.toml`` (``allow_unsigned =
true``, HTTP on port 0, telemetry every second):

    baseline   ``python -c``: imports paho.mqtt.client and psutil, connects one paho client (MQTT 5)
               to the broker, publishes one "online" message, sleeps — Python with paho-mqtt and
               psutil and nothing of ours
    agent      ``python -m edge_agent --config agent.toml`` (what the systemd unit runs)
    agent-key  the same with ``trusted_keys = [<a generated Ed25519 .pub>]`` instead of
               ``allow_unsigned``: the production set-up
    cli        ``edgectl agent run --config agent.toml`` (the typer entry point: typer and rich too)

A process counts as up once this benchmark, subscribed through its own ``MqttTransport``, has
seen its retained ``online`` state and (agents only) two telemetry messages. After ``--settle``
seconds, RSS and USS (psutil ``memory_full_info``: USS is what the process alone holds, RSS also
counts shared library pages) and anonymous memory (heap, arenas, stacks: unlike USS, it does not
depend on which other processes on the machine map the same libraries) are sampled ``--samples``
times; the median per process, then the median over rounds, is printed with ratio = process / baseline, and
PASS/MISS against the goal: agent RSS ≤ 30 MB (MiB, as ``ps`` counts). An unmeasured warm-up
round goes first. The children cache bytecode in a temp folder (``PYTHONPYCACHEPREFIX``) even
when this shell sets PYTHONDONTWRITEBYTECODE, as on a device where pip compiled every module;
``--env-bytecode`` keeps the environment's setting instead (our modules are then compiled from
source at every start, which costs ~1 MB more).

``--imports`` (automatic on a MISS) says where the memory goes: the agent (and the CLI) is run
once more with a hook on every fresh import (importlib's ``_load_unlocked``) that records the RSS
and anonymous memory each module's own code adds (its own imports excluded) and which code imported it. paho
and psutil are imported before the hook: they are the baseline's. Costs are grouped by top-level
package (our modules by module), each with the nearest of our modules that first imported it,
so the table reads "what to make lazy, and where". What is left (measured idle RSS − RSS when the
hook went in − imports) is run-time state: threads, buffers, allocator arenas.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from edgectl.transport.base import Message
from edgectl.transport.mqtt import MqttSettings, MqttTransport
from tests.mosquitto import Mosquitto

REPO = Path(__file__).resolve().parent.parent
MIB = 1 << 20
GOAL_RSS_MIB = 30.0
FIRST_PARTY = ("edge_agent", "edgectl", "fleet", "compiler")

# The baseline process. Nothing beyond paho and psutil is imported (not even json): the
# "online" message is a literal.
BASELINE = r"""
import sys, time
import paho.mqtt.client as paho
import psutil
from paho.mqtt.enums import CallbackAPIVersion
url, device = sys.argv[1], sys.argv[2]
host, port = url.rsplit("/", 1)[1].split(":")
c = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="bench-" + device, protocol=paho.MQTTv5)
c.connect(host, int(port))
c.loop_start()
while not c.is_connected():
    time.sleep(0.01)
c.publish("edgectl/v1/devices/" + device + "/state", b'{"online":true}', qos=1, retain=True).wait_for_publish(10)
while True:
    time.sleep(3600)
"""

# Runs a module as __main__ with a hook on every fresh import (importlib's _load_unlocked): the
# RSS and anonymous memory a module's own code adds (its imports excluded), and the code that imported it. paho and
# psutil are imported before the hook goes in: they are the baseline's. Written out at exit.
HOOK = r"""
import json, os, sys, runpy, atexit, _thread
import paho.mqtt.client, psutil
import importlib._bootstrap as bootstrap
PAGE = os.sysconf("SC_PAGE_SIZE")
def mem():
    with open("/proc/self/statm", "rb") as f:
        rss = int(f.read().split()[1]) * PAGE
    with open("/proc/self/smaps_rollup", "rb") as f:
        anon = sum(int(line.split()[1]) * 1024 for line in f if line.startswith(b"Anonymous:"))
    return rss, anon
records, stacks = [], {}
start_rss, start_anon = mem()
real = bootstrap._load_unlocked
FIRST = ("edge_agent", "edgectl", "fleet", "compiler")
def importer(module):
    # The nearest code outside the imported module (outside its package, for a third party's),
    # and the nearest of ours.
    top = module.split(".")[0]
    mine = top in FIRST
    f, direct, ours = sys._getframe(2), None, None
    while f is not None:
        name = f.f_globals.get("__name__", "?")
        if (not f.f_code.co_filename.startswith(("<frozen", "<string>")) and name != module
                and (mine or name.split(".")[0] != top)):
            if name == "__main__":
                name = f.f_globals.get("__spec__").name if f.f_globals.get("__spec__") else name
            where = name if f.f_code.co_name == "<module>" else f"{name}.{f.f_code.co_name}()"
            direct = direct or where
            if name.split(".")[0] in FIRST:
                ours = where
                break
        f = f.f_back
    return direct, ours
def hooked(spec):
    stack = stacks.setdefault(_thread.get_ident(), [])
    direct, ours = importer(spec.name)
    rss0, anon0 = mem()
    stack.append([0, 0])
    try:
        return real(spec)
    finally:
        rss1, anon1 = mem()
        kids = stack.pop()
        incl = (rss1 - rss0, anon1 - anon0)
        if stack:
            stack[-1][0] += incl[0]
            stack[-1][1] += incl[1]
        records.append([spec.name, incl[0] - kids[0], incl[1] - kids[1], direct, ours])
def dump():
    with open(os.environ["BENCH_IMPORTS_OUT"], "w") as f:
        json.dump({"start": [start_rss, start_anon], "records": records}, f)
atexit.register(dump)
bootstrap._load_unlocked = hooked
sys.argv = sys.argv[1:]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""


def child_env(pycache: Path | None) -> dict[str, str]:
    """The children's environment. With ``pycache``, bytecode is cached there (not in the source
    tree) even if this environment says PYTHONDONTWRITEBYTECODE, as on an installed device where
    pip compiled every module: compiling from source on each start costs memory too."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    if pycache is not None:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(pycache)
    return env


def write_config(folder: Path, device_id: str, url: str, trusted_key: Path | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    cfg = folder / "agent.toml"
    trust = f'trusted_keys = ["{trusted_key}"]\n' if trusted_key is not None else "allow_unsigned = true\n"
    cfg.write_text(
        f'device_id = "{device_id}"\n'
        f'data_dir = "{folder / "data"}"\n'
        f"{trust}"
        "telemetry_interval_s = 1\n"
        f'[broker]\nurl = "{url}"\n'
        '[http]\nhost = "127.0.0.1"\nport = 0\n'
    )
    return cfg


class Watcher:
    """Subscribed to every device's state and telemetry; tells when a device is up."""

    def __init__(self, url: str) -> None:
        self.online: set[str] = set()
        self.telemetry: dict[str, int] = {}
        self._cond = threading.Condition()
        self.t = MqttTransport(MqttSettings(url=url, client_id="bench-idle-watcher"))
        self.t.subscribe("edgectl/v1/devices/+/state", self._on_state)
        self.t.subscribe("edgectl/v1/devices/+/telemetry", self._on_telemetry)
        self.t.start()
        if not self.t.wait_connected(10):
            raise SystemExit(f"watcher did not connect: {self.t.last_error}")

    @staticmethod
    def _device(msg: Message) -> str:
        return msg.topic.split("/")[3]

    def _on_state(self, msg: Message) -> None:
        try:
            online = bool(msg.payload) and json.loads(msg.payload).get("online") is True
        except ValueError:
            return
        with self._cond:
            (self.online.add if online else self.online.discard)(self._device(msg))
            self._cond.notify_all()

    def _on_telemetry(self, msg: Message) -> None:
        with self._cond:
            dev = self._device(msg)
            self.telemetry[dev] = self.telemetry.get(dev, 0) + 1
            self._cond.notify_all()

    def wait_up(self, device: str, telemetry: int, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(
                lambda: device in self.online and self.telemetry.get(device, 0) >= telemetry, timeout)

    def close(self) -> None:
        self.t.stop()


@dataclass
class Proc:
    name: str
    device: str
    argv: list[str]
    telemetry: int  # telemetry messages to wait for before it counts as up
    log: Path
    env: dict[str, str]
    popen: subprocess.Popen[bytes] | None = None
    samples: list[tuple[int, int, int, int]] = field(default_factory=list)  # rss, uss, anon, threads

    def start(self) -> None:
        with self.log.open("wb") as out:
            self.popen = subprocess.Popen(self.argv, cwd=REPO, env=self.env, stdin=subprocess.DEVNULL, stdout=out,
                                          stderr=subprocess.STDOUT)

    def sample(self) -> None:
        assert self.popen is not None
        p = psutil.Process(self.popen.pid)
        m = p.memory_full_info()
        self.samples.append((m.rss, m.uss, anonymous_bytes(p.pid), p.num_threads()))

    def stop(self) -> None:
        if self.popen is None:
            return
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self.popen = None

    def failed(self) -> str:
        code = self.popen.poll() if self.popen is not None else None
        tail = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
        return f"{self.name} ({' '.join(self.argv)}) did not come up (exit code {code}):\n{tail}"


def anonymous_bytes(pid: int) -> int:
    """Anonymous memory (heap, arenas, stacks): private whatever else runs on the machine."""
    with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
        return sum(int(line.split()[1]) * 1024 for line in f if line.startswith(b"Anonymous:"))


def edgectl_argv() -> list[str]:
    script = Path(sys.executable).parent / "edgectl"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "edgectl"]


def make_procs(work: Path, url: str, tag: str, env: dict[str, str]) -> list[Proc]:
    procs = [Proc("baseline", f"base-{tag}", [sys.executable, "-c", BASELINE, url, f"base-{tag}"], 0,
                  work / f"base-{tag}.log", env)]
    key = work / "fleet.key.pub"
    if not key.exists():  # in a child: cryptography mapped here would hide the agents' copies from USS
        subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; from edgectl.signing import "
                        "write_keypair; write_keypair(Path(sys.argv[1]))", str(work / "fleet.key")], check=True,
                       env=env)
    agent = [sys.executable, "-m", "edge_agent"]
    for name, argv, trusted in (("agent", agent, None), ("agent-key", agent, key),
                                ("cli", [*edgectl_argv(), "agent", "run"], None)):
        device = f"{name}-{tag}"
        cfg = write_config(work / device, device, url, trusted)
        procs.append(Proc(name, device, [*argv, "--config", str(cfg)], 2, work / f"{device}.log", env))
    return procs


@contextmanager
def running(procs: list[Proc], watcher: Watcher, timeout: float) -> Iterator[None]:
    try:
        for p in procs:
            p.start()
        for p in procs:
            if not watcher.wait_up(p.device, p.telemetry, timeout):
                raise SystemExit(p.failed())
        yield
    finally:
        for p in procs:
            p.stop()


def warm_up(url: str, watcher: Watcher, work: Path, env: dict[str, str]) -> None:
    """One unmeasured round: fills the bytecode cache and the page cache."""
    with running(make_procs(work, url, "warm", env), watcher, timeout=120):
        pass


def measure(url: str, watcher: Watcher, work: Path, env: dict[str, str], rounds: int, settle: float, samples: int,
            interval: float) -> dict[str, dict[str, float]]:
    """Median RSS/USS/anon (MiB) and threads per process kind over rounds (each a median of samples)."""
    per_round: dict[str, list[tuple[float, ...]]] = {}
    for r in range(rounds):
        procs = make_procs(work, url, f"r{r}", env)
        for p in procs:  # one at a time: pages two measured processes share would count in neither's USS
            with running([p], watcher, timeout=60):
                time.sleep(settle)
                for _ in range(samples):
                    p.sample()
                    time.sleep(interval)
        for p in procs:
            rss, uss, anon, threads = (statistics.median(col) for col in zip(*p.samples, strict=True))
            per_round.setdefault(p.name, []).append((rss / MIB, uss / MIB, anon / MIB, threads))
            print(f"round {r} {p.name}: RSS {rss / MIB:.1f} MiB, USS {uss / MIB:.1f} MiB, anon {anon / MIB:.1f} MiB, "
                  f"{threads:.0f} threads", flush=True)
    keys = ("rss", "uss", "anon", "threads")
    return {name: {k: statistics.median(v[i] for v in vals) for i, k in enumerate(keys)}
            for name, vals in per_round.items()}


# --- where the memory goes ----------------------------------------------------------------------

def group_of(module: str) -> str:
    top = module.split(".")[0]
    return module if top in FIRST_PARTY else top


def import_breakdown(name: str, module_argv: list[str], watcher: Watcher, work: Path, env: dict[str, str],
                     top: int) -> tuple[float, float]:
    """Run ``python -m <module_argv>`` under the import hook until it is up, stop it, print the
    costliest import groups. Returns (RSS when the hook went in, RSS added by imports), MiB."""
    device = f"{name}-imports"
    cfg = write_config(work / device, device, watcher.t.settings.url)
    out = work / f"{device}.json"
    proc = Proc(device, device, [sys.executable, "-c", HOOK, *module_argv, "--config", str(cfg)], 2,
                work / f"{device}.log", {**env, "BENCH_IMPORTS_OUT": str(out)})
    with running([proc], watcher, timeout=90):
        time.sleep(1.0)
    data = json.loads(out.read_text())
    groups: dict[str, list[float]] = {}
    owner: dict[str, str] = {}
    for module, rss, anon, direct, ours in data["records"]:
        g = group_of(module)
        acc = groups.setdefault(g, [0.0, 0.0, 0.0])
        acc[0] += rss / MIB
        acc[1] += anon / MIB
        acc[2] += 1
        if g not in owner:
            owner[g] = ours if ours is None or ours == direct else f"{ours} → {direct}"
            owner[g] = owner[g] or f"{direct} (not ours)"
    total_rss = sum(v[0] for v in groups.values())
    total_anon = sum(v[1] for v in groups.values())
    print(f"\n{name}: imports beyond python + paho + psutil ({data['start'][0] / MIB:.1f} MiB RSS when they "
          f"start): +{total_rss:.1f} MiB RSS, +{total_anon:.1f} MiB anon in {len(data['records'])} modules")
    print("group (package or our module) | own +RSS MiB | own +anon MiB | modules | first imported by (ours → direct)")
    ranked = sorted(groups.items(), key=lambda kv: -kv[1][0])
    for g, (drss, danon, n) in ranked[:top]:
        print(f"{g} | {drss:.2f} | {danon:.2f} | {int(n)} | {owner[g]}")
    rest = ranked[top:]
    if rest:
        print(f"({len(rest)} more groups) | {sum(v[0] for _, v in rest):.2f} | {sum(v[1] for _, v in rest):.2f} | "
              f"{sum(int(v[2]) for _, v in rest)} |")
    return data["start"][0] / MIB, total_rss


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--settle", type=float, default=3.0, help="seconds after start-up before sampling")
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between samples")
    parser.add_argument("--imports", action="store_true", help="always print the import breakdown")
    parser.add_argument("--top", type=int, default=15, help="groups shown in the import breakdown")
    parser.add_argument("--env-bytecode", action="store_true",
                        help="keep this environment's bytecode settings (PYTHONDONTWRITEBYTECODE=1 compiles our "
                             "modules from source at every start) instead of a warm bytecode cache")
    parser.add_argument("--quick", action="store_true", help="1 round, short settle, 2 samples")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.settle, args.samples, args.interval = 1, 1.0, 2, 0.5

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        broker = Mosquitto(work / "mosquitto")
        broker.start()
        watcher = Watcher(broker.url)
        env = child_env(None if args.env_bytecode else work / "pycache")
        try:
            warm_up(broker.url, watcher, work, env)
            med = measure(broker.url, watcher, work, env, args.rounds, args.settle, args.samples, args.interval)
            base = med["baseline"]
            print(f"\nidle memory, MiB (median of {args.samples} samples × {args.rounds} rounds; "
                  f"settled {args.settle:.0f} s after connect + state + 2 telemetry)")
            print("process | RSS | USS | anon | threads | RSS ratio | USS ratio | anon ratio | +RSS over baseline "
                  "| goal RSS ≤ 30")
            for name in med:
                m = med[name]
                verdict = "" if name == "baseline" else ("PASS" if m["rss"] <= GOAL_RSS_MIB else "MISS")
                print(f"{name} | {m['rss']:.1f} | {m['uss']:.1f} | {m['anon']:.1f} | {m['threads']:.0f} | "
                      f"{m['rss'] / base['rss']:.2f} | {m['uss'] / base['uss']:.2f} | {m['anon'] / base['anon']:.2f} | "
                      f"{m['rss'] - base['rss']:+.1f} | {verdict}")
            print("ratio = process / baseline (python -c: paho.mqtt.client + psutil imported, one paho client "
                  "connected); lower is better. USS leaves out library pages any other process on the machine "
                  "maps too (it moves with what else runs); anon (heap, stacks) does not")
            if args.imports or med["agent"]["rss"] > GOAL_RSS_MIB:
                for name, argv in (("agent", ["edge_agent"]), ("cli", ["edgectl", "agent", "run"])):
                    start, imports = import_breakdown(name, argv, watcher, work, env, args.top)
                    print(f"{name}: the rest of its idle RSS (measured − start − imports; run-time state, "
                          f"threads, arenas): {med[name]['rss'] - start - imports:+.1f} MiB")
        finally:
            watcher.close()
            broker.stop()


if __name__ == "__main__":
    main()
