"""``edgectl up``: a whole fleet on this machine in one command, to see the product work in a minute.

    report = run_up(UpOptions(devices=5, duration=60), on_status=print)
    report.first_serving_s, report.requests.correct, report.errors

What runs, and where (everything is stopped again before ``run_up`` returns, Ctrl-C included)::

    broker        a child process on 127.0.0.1 and a free port (fleet/broker.py): Mosquitto, or
                  where it is not installed the embedded MQTT 5 broker (fleet/embedded_broker.py);
                  ``--broker memory`` puts the fleet on the in-process MemoryBroker instead
    controller    fleet.controller.Controller in this process (registry, scheduler, chunk
                  server), with its HTTP API (/v1/status, /metrics) on a free port
    N devices     edge_agent.daemon.Agent in this process, each with its own broker connection,
                  data dir, HTTP port and simulated capacity (labels and model memory budget):
                  the real pipeline (desired state, chunked transfer, signature check, probe in
                  a child process, in-process runtime); they all run on this host, so they
                  announce its real arch (the scheduler matches artifacts against it)
    model build   child processes, concurrently with the above: `edgectl example digits-cnn`
                  then `edgectl compile --target x86_64-avx2 --sign-key …`, reused by later
                  runs while it still verifies
    then          publish (fleet.ops.publish_dir) → deploy (fleet.ops.deploy, spread across
                  zones) → HTTP POST /v1/models/digits:predict round-robin over the serving
                  replicas with held-out digits, each answer checked against its label
    with --chaos  the controller runs as a child process instead (fleet/controller_proc.py), each
                  device reaches the broker through its own TCP proxy (fleet/linkproxy.py), and once
                  the deployment serves, fleet/chaos.py injects the faults (fleet/up_chaos.py
                  connects the two); the run ends when the schedule is done

Modules: fleet/up_build.py builds the model, fleet/up_requests.py sends the requests; this one
starts, watches and stops the fleet.

The workdir (default ``.edgectl-up``)::

    fleet.toml        this fleet's config: `edgectl fleet status -c .edgectl-up/fleet.toml --watch`
                      (or explain, events …) from another terminal while it runs
    model/            keys, example data, compile output, build.log: kept across runs
    run/              broker, controller store and artifacts, device data dirs: replaced by the
                      next run, kept after this one for a look at what happened

Without Mosquitto the fleet runs on the embedded broker: a real MQTT 5 broker, so other processes
(`edgectl fleet status`, an MQTT client, the chaos faults) reach it as they would Mosquitto; it keeps
its sessions in memory only. With ``--broker memory`` only this process can reach the fleet
(`edgectl fleet status` still reads the store).

Shutdown stops the controller before the devices: their goodbyes would otherwise make it move
every replica ("replaced") on the way out. The devices are then marked offline in the store and
the run's end is logged as an event, so the store says what the fleet looked like when it stopped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import random
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from edgectl.errors import UserError
from fleet.up_build import TARGET, BuildFailed, BuiltModel, ModelBuild, prepare_model
from fleet.up_requests import LoadGenerator, RequestStats

if TYPE_CHECKING:
    from edge_agent.config import AgentConfig
    from edge_agent.daemon import Agent
    from edgectl.transport.memory import MemoryBroker
    from fleet.broker import BrokerProcess
    from fleet.chaos import ChaosOptions, ChaosReport, ChaosRunner
    from fleet.config import FleetConfig
    from fleet.controller import Controller
    from fleet.controller_proc import ControllerProcess
    from fleet.http_api import FleetHttp
    from fleet.linkproxy import LinkProxy
    from fleet.store import Store

log = logging.getLogger(__name__)
__all__ = ["BuildFailed", "BuiltModel", "ModelBuild", "RequestStats", "UpOptions", "UpReport", "UpStatus",
           "prepare_model", "run_up"]

BROKERS = ("auto", "mosquitto", "embedded", "memory")
DEPLOYMENT = "digits"
TICK_S = 0.25  # how often the store is polled: the timeline is this precise
STATUS_EVERY_S = 0.5  # how often on_status is called
ONLINE_WAIT_S = 15.0  # at most this long after the agents start, the deploy waits for all to register
RUN_MARKER = ".edgectl-up"  # only a run/ folder holding this is ever deleted


@dataclass(frozen=True)
class Profile:
    """A simulated device class: what it is called and the model memory budget it announces."""

    name: str
    memory_budget_mb: int


PROFILES = (Profile("gateway", 512), Profile("camera", 128), Profile("kiosk", 256), Profile("sensor-hub", 64),
            Profile("edge-server", 1024))
ZONES = ("zone-a", "zone-b", "zone-c")
SITES = ("lab", "shop")



@dataclass(frozen=True)
class UpOptions:
    """What ``edgectl up`` runs.

    >>> UpOptions(devices=3, duration=30, broker="memory").replicas
    2
    """

    devices: int = 5
    workdir: Path = Path(".edgectl-up")
    duration: float | None = None  # seconds from the start; None = until Ctrl-C
    requests_per_s: float = 10.0
    seed: int = 0
    broker: str = "auto"  # auto (Mosquitto when installed, else embedded) | mosquitto | embedded | memory
    # Faults to inject once the deployment serves (fleet/chaos.py). The controller then runs as a
    # child process and each device reaches the broker through its own proxy (fleet/linkproxy.py);
    # the run ends when the schedule is done (or at ``duration``, whichever comes first).
    chaos: ChaosOptions | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.devices <= 100:
            raise UserError(f"--devices {self.devices} must be from 1 to 100 (they all run in this process)")
        if self.duration is not None and not self.duration > 0:
            raise UserError(f"--duration {self.duration:g} must be a positive number of seconds")
        if not 0 < self.requests_per_s <= 1000:
            raise UserError(f"--rate {self.requests_per_s:g} must be more than 0 and at most 1000 requests/s")
        if self.broker not in BROKERS:
            raise UserError(f"--broker {self.broker!r} must be one of {', '.join(BROKERS)}")
        if self.chaos is not None and self.broker == "memory":
            raise UserError("--chaos needs a TCP broker (it restarts the broker and cuts TCP links): "
                            "leave out --broker memory")

    @property
    def replicas(self) -> int:
        # A majority of the devices, at most 3: some devices stay free, so the spread is visible.
        return min(3, self.devices // 2 + 1)


@dataclass(frozen=True)
class DeviceInfo:
    id: str
    profile: str
    labels: Mapping[str, str]
    memory_budget_mb: int
    http_port: int | None


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: int
    target: str
    cached: bool  # reused from an earlier run in the same workdir
    build_s: float
    variants: tuple[str, ...]  # "digits_cnn.int8.onnx (int8, compile-time accuracy 97.3 %)"


@dataclass(frozen=True)
class UpStatus:
    """What ``on_status`` gets, about twice a second: ``fleet`` is ``fleet.ops.status`` (what
    `edgectl fleet status --json` prints), None until the controller is up."""

    phase: str  # starting | building | deploying | serving | stopping | stopped
    elapsed_s: float
    duration_s: float | None
    broker: str
    broker_url: str | None
    devices: tuple[DeviceInfo, ...]
    fleet: Mapping[str, Any] | None
    requests: RequestStats
    events: tuple[str, ...]  # every event so far, oldest first: "  3.2 s  dev-02: digits@1 serving"


@dataclass(frozen=True)
class UpReport:
    """What happened: ``timeline`` holds seconds since the start (broker_ready, controller_ready,
    devices_started, devices_online, model_ready, published, deployed, first_serving,
    all_serving, stopped); a step that did not happen is absent."""

    workdir: Path
    fleet_config: Path | None
    broker: str
    broker_url: str | None
    devices: tuple[DeviceInfo, ...]
    model: ModelInfo | None
    deployment: str
    replicas: int
    serving: tuple[str, ...]  # devices serving the deployment when the run ended
    timeline: Mapping[str, float]
    requests: RequestStats
    errors: tuple[str, ...]
    notes: tuple[str, ...]  # what the user should know at the end, e.g. the broker fallback
    events: tuple[str, ...]
    interrupted: bool
    duration_s: float
    chaos: ChaosReport | None = None

    @property
    def first_serving_s(self) -> float | None:
        return self.timeline.get("first_serving")

    @property
    def all_serving_s(self) -> float | None:
        return self.timeline.get("all_serving")

    @property
    def ok(self) -> bool:
        """A replica served and answered at least one request correctly, and with --chaos every
        invariant held."""
        served = self.first_serving_s is not None and self.requests.correct > 0
        return served and (self.chaos is None or self.chaos.ok)

    def to_dict(self) -> dict[str, Any]:
        doc = _plain(self)
        doc["chaos"] = self.chaos.to_dict() if self.chaos is not None else None
        doc.update(ok=self.ok, first_serving_s=self.first_serving_s, all_serving_s=self.all_serving_s,
                   accuracy=self.requests.accuracy)
        return dict(doc)


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value



# --- the run -------------------------------------------------------------------------------------

@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold off Ctrl-C (and SIGTERM) while the fleet stops: a second one must not leave the broker
    running. Only the main thread can set handlers; elsewhere the signals never arrive anyway."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    sigs = (signal.SIGINT, signal.SIGTERM)
    old = {s: signal.signal(s, lambda *_: log.info("still stopping, please wait")) for s in sigs}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)


class _Up:
    """One ``run_up``: everything it started, in the order it has to be stopped."""

    deployment_name = DEPLOYMENT

    def __init__(self, options: UpOptions, on_status: Callable[[UpStatus], None] | None) -> None:
        self.o = options
        self.on_status = on_status
        self.t0 = time.monotonic()
        self.shown = Path(options.workdir)  # as the user wrote it, for messages
        self.workdir = self.shown.resolve()
        self.run_dir = self.workdir / "run"
        self.phase = "starting"
        self.events: list[str] = []
        self.errors: dict[str, None] = {}  # ordered, no duplicates
        self.notes: list[str] = []
        self.timeline: dict[str, float] = {}
        self._elock = threading.Lock()
        self.broker_kind = options.broker  # "auto" is resolved by start_broker()
        self.broker_url: str | None = None
        self.fleet_config: Path | None = None
        self.broker: BrokerProcess | None = None  # Mosquitto or the embedded broker, a child process
        self.memory: MemoryBroker | None = None
        self.controller: Controller | None = None
        self.ctl_proc: ControllerProcess | None = None
        self.cfg: FleetConfig | None = None
        self.http: FleetHttp | None = None
        self.proxies: dict[str, LinkProxy] = {}
        self.chaos: ChaosRunner | None = None
        self.store: Store | None = None
        self.agents: list[Agent] = []
        self.devices: list[DeviceInfo] = []
        self.build = ModelBuild(self.shown, on_event=self.event)
        self.model: ModelInfo | None = None
        self.built: BuiltModel | None = None
        self.load: LoadGenerator | None = None
        self.fleet: Mapping[str, Any] | None = None
        self.serving: tuple[str, ...] = ()
        self.interrupted = False
        self._states: dict[tuple[str, str], str] = {}
        self._online: set[str] = set()
        self._event_id = 0  # the controller's event log, read up to here
        self._notified = 0.0
        self._lockfile: IO[str] | None = None

    # --- reporting ---
    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def event(self, text: str) -> None:
        with self._elock:
            self.events.append(f"{self.elapsed():6.1f} s  {text}")
        log.info("%s", text)

    def mark(self, step: str) -> None:
        self.timeline.setdefault(step, round(self.elapsed(), 2))

    def error(self, text: str) -> None:
        if text not in self.errors:
            self.errors[text] = None
            self.event(f"error: {text}")

    def notify(self, force: bool = False) -> None:
        if self.on_status is None or (not force and time.monotonic() - self._notified < STATUS_EVERY_S):
            return
        self._notified = time.monotonic()
        with self._elock:
            events = tuple(self.events)
        self.on_status(UpStatus(self.phase, self.elapsed(), self.o.duration, self.broker_kind, self.broker_url,
                                tuple(self.devices), self.fleet, self.requests(), events))

    def requests(self) -> RequestStats:
        return self.load.stats() if self.load is not None else RequestStats()

    def report(self) -> UpReport:
        errors = dict(self.errors)
        if self.load is not None:
            for text, n in self.load.errors.most_common(5):
                errors[f"{n} request(s) failed: {text}"] = None
        return UpReport(
            workdir=self.shown, fleet_config=self.fleet_config, broker=self.broker_kind, broker_url=self.broker_url,
            devices=tuple(self.devices), model=self.model, deployment=DEPLOYMENT, replicas=self.o.replicas,
            serving=self.serving, timeline=dict(self.timeline), requests=self.requests(), errors=tuple(errors),
            notes=tuple(self.notes), events=tuple(self.events), interrupted=self.interrupted,
            duration_s=round(self.elapsed(), 2), chaos=self.chaos.report() if self.chaos is not None else None,
        )

    # --- start-up ---
    def prepare_dirs(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._lock_workdir()
        if self.run_dir.exists():
            if not (self.run_dir / RUN_MARKER).exists():
                raise UserError(f"{self.shown / 'run'} exists and was not made by `edgectl up`: "
                                "choose another --workdir")
            shutil.rmtree(self.run_dir)  # the previous run's fleet: a new run starts from scratch
        self.run_dir.mkdir(parents=True)
        (self.run_dir / RUN_MARKER).write_text("made by `edgectl up`; replaced by its next run\n")
        self.build.ensure_key()

    def _lock_workdir(self) -> None:
        # A second `edgectl up` on the same workdir would delete this run's files under its feet.
        try:
            import fcntl
        except ImportError:  # not on Windows: there, two runs are the user's business
            return
        self._lockfile = (self.workdir / "up.lock").open("w")
        try:
            fcntl.flock(self._lockfile, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lockfile.close()
            self._lockfile = None
            raise UserError(f"another `edgectl up` is using {self.shown}: stop it, or pass another --workdir") from None

    def start_broker(self) -> None:
        from fleet.broker import INSTALL_HINT, make_broker

        if self.broker_kind == "auto":
            self.broker_kind = "mosquitto" if _have_mosquitto() else "embedded"
            if self.broker_kind == "embedded":
                self.notes.append(f"Mosquitto is not installed, so the fleet ran on the embedded MQTT 5 broker "
                                  f"(pure Python, sessions in memory only); {INSTALL_HINT} for a faster one")
                self.event(self.notes[-1])
        if self.broker_kind == "memory":
            from edgectl.transport.memory import MemoryBroker

            self.memory = MemoryBroker()
            self.event("broker: in-process (MemoryBroker; only this process can reach it)")
        else:
            self.broker = make_broker(self.broker_kind, self.run_dir / "broker").start()
            self.broker_url = self.broker.url
            pid = self.broker.proc.pid if self.broker.proc is not None else "?"
            name = "Mosquitto" if self.broker_kind == "mosquitto" else "embedded MQTT 5 broker"
            self.event(f"broker: {name} on {self.broker_url} (pid {pid}, files in {self.shown / 'run' / 'broker'})")
        self.mark("broker_ready")

    def write_fleet_config(self, http_port: int = 0) -> Path:
        path = self.workdir / "fleet.toml"
        url = self.broker_url or "mqtt://127.0.0.1:1883"
        note = "" if self.broker_url else "  # unused: this run's broker is in-process"
        path.write_text(
            "# Written by `edgectl up` for its current run. While it runs, from another terminal:\n"
            f"#   edgectl fleet status -c {self.shown / 'fleet.toml'} --watch\n"
            f'broker_url = "{url}"{note}\n'
            'store_url = "run/controller/fleet.db"\n'
            'artifact_dir = "run/controller/artifacts"\n'
            f'trusted_keys = ["{self.build.public_key.relative_to(self.shown)}"]\n'
            f"http_port = {http_port}\n"
            "heartbeat_timeout_s = 10\n"
            "reconcile_interval_s = 0.5\n"
            'controller_id = "up"\n'
            "\n"
            "# The devices all share this host's CPU, so its load says nothing about one of them: a busy\n"
            "# host would otherwise keep every device from taking (or keeping) a replica.\n"
            "[scheduler]\n"
            "max_cpu_percent = 100\n"
            "\n"
            "[overload]\n"
            "cpu_percent = 100\n"
        )
        return path

    def start_controller(self) -> None:
        from edgectl.transport.memory import MemoryTransport
        from fleet.config import load_fleet_config
        from fleet.controller import Controller
        from fleet.http_api import FleetHttp
        from fleet.store import open_store

        self.fleet_config = self.shown / "fleet.toml"
        if self.o.chaos is not None:  # a child process: a fault kills -9 it and starts it again
            from fleet.broker import free_port
            from fleet.controller_proc import ControllerProcess

            port = free_port()
            self.cfg = load_fleet_config(self.write_fleet_config(port))
            self.ctl_proc = ControllerProcess(self.workdir / "fleet.toml", http_port=port,
                                              log_path=self.run_dir / "controller" / "controller.log")
            pid = self.ctl_proc.start()
            self.store = open_store(self.cfg.store_url)
            self.mark("controller_ready")
            self.event(f"controller: process {pid}, HTTP API on http://127.0.0.1:{port}/v1/status "
                       f"(log in {self.shown / 'run' / 'controller' / 'controller.log'})")
            return
        cfg = self.cfg = load_fleet_config(self.write_fleet_config())
        transport = MemoryTransport(self.memory, f"edgectl-controller-{cfg.controller_id}") if self.memory else None
        self.controller = Controller(cfg, transport=transport, rng=random.Random(self.o.seed))
        self.controller.start()
        self.http = FleetHttp(self.controller, cfg.http_host, 0).start()
        self.store = open_store(cfg.store_url)
        self.mark("controller_ready")
        self.event(f"controller: running, HTTP API on http://{cfg.http_host}:{self.http.port}/v1/status")

    def start_agents(self) -> None:
        from edge_agent.config import AgentConfig, BrokerConfig, HttpConfig

        for i in range(self.o.devices):
            device_id = f"dev-{i + 1:02d}"
            profile = PROFILES[i % len(PROFILES)]
            labels = {"profile": profile.name, "zone": ZONES[i % len(ZONES)], "site": SITES[i % len(SITES)]}
            url = self.broker_url or "mqtt://127.0.0.1:1883"
            if self.o.chaos is not None and self.broker is not None:
                from fleet.linkproxy import LinkProxy

                # Its own TCP link to the broker, which a fault can cut, slow down or damage.
                proxy = self.proxies[device_id] = LinkProxy(self.broker.host, self.broker.port,
                                                            name=device_id).start()
                url = proxy.url
            cfg = AgentConfig(
                device_id=device_id, data_dir=self.run_dir / "devices" / device_id,
                broker=BrokerConfig(url=url), trusted_keys=(self.build.public_key.resolve(),),
                memory_budget_bytes=profile.memory_budget_mb << 20,
                telemetry_interval_s=2.0, labels=tuple(sorted(labels.items())), http=HttpConfig(port=0), tick_s=1.0,
            )
            agent = self.start_agent(cfg)
            port = agent.http.port if agent.http is not None else None
            self.devices.append(DeviceInfo(device_id, profile.name, labels, profile.memory_budget_mb, port))
        self.mark("devices_started")
        self.event(f"{self.o.devices} device(s) started; each connects, announces itself and waits for work")

    def start_agent(self, cfg: AgentConfig) -> Agent:
        from edge_agent.daemon import Agent, state_message
        from edgectl import wire
        from edgectl.transport.base import Will
        from edgectl.transport.memory import MemoryTransport

        transport = None
        if self.memory is not None:
            will = Will(wire.state_topic(cfg.device_id), state_message(cfg.device_id, False, None), qos=1, retain=True)
            transport = MemoryTransport(self.memory, f"edgectl-agent-{cfg.device_id}", will=will)
        agent = Agent(cfg, transport=transport)
        self.agents.append(agent)  # before start(): a half-started agent is still stopped
        agent.start()
        return agent

    def set_http_port(self, device: str, port: int | None) -> None:
        """A device restarted by a fault serves on a new port (None while it is down)."""
        from fleet.up_chaos import replace_port

        replace_port(self.devices, device, port)

    def maybe_start_chaos(self) -> None:
        if self.o.chaos is None or self.chaos is not None or "all_serving" not in self.timeline:
            return
        from fleet.chaos import ChaosRunner
        from fleet.up_chaos import UpChaosFleet

        assert self.cfg is not None
        self.event(f"chaos: {len(self.o.chaos.faults)} fault(s), seed {self.o.chaos.seed}: "
                   + ", ".join(self.o.chaos.faults))
        self.phase = "chaos"
        self.chaos = ChaosRunner(UpChaosFleet(self), self.o.chaos, self.cfg.store_url, self.elapsed).start()

    # --- the loop ---
    def tick(self) -> None:
        from fleet.ops import FAILED, HEALTHY, status

        assert self.store is not None
        self.fleet = status(self.store)
        for d in self.fleet["devices"]:
            if d["online"] and d["id"] not in self._online:
                self._online.add(d["id"])
                info = next((x for x in self.devices if x.id == d["id"]), None)
                if info is not None:
                    self.event(f"{info.id} online: {info.profile}, {info.labels['zone']}, site {info.labels['site']}, "
                               f"{info.memory_budget_mb} MB model budget, HTTP :{info.http_port}")
            for m in d["models"]:
                key = (d["id"], m["deployment"])
                if self._states.get(key) != m["state"]:
                    self._states[key] = m["state"]
                    why = f" ({m['reason']})" if m["reason"] and m["state"] in FAILED else ""
                    self.event(f"{d['id']}: {m['deployment']}@{m['version']} {m['state']} ({m['variant']}){why}")
                if m["state"] in FAILED and self.o.chaos is None:  # under chaos, failures are expected
                    self.error(f"{d['id']}: {m['deployment']} {m['state']}: {m['reason'] or 'no reason given'}")
        for e in self.store.list_events(since_id=self._event_id, limit=100):
            self._event_id = e.id
            if e.kind == "unplaced":  # the scheduler's reasons: what a newcomer needs when nothing serves
                self.event(f"controller: {e.subject}: {e.message}")
        if len(self._online) >= self.o.devices:
            self.mark("devices_online")
        if self.built is None and self.build.done:
            if self.build.error is not None:
                raise self.build.error
            self.built = self.build.result
            self.mark("model_ready")
        # Deploy once the devices have registered, so the first placement sees them all (and does
        # not log "unplaced: none registered"); a device that never shows up must not block it.
        waited = self.elapsed() - self.timeline.get("devices_started", 0.0)
        if self.built is not None and self.model is None and ("devices_online" in self.timeline
                                                              or waited > ONLINE_WAIT_S):
            self.deploy(self.built)
        serving = tuple(d["id"] for d in self.fleet["devices"] if d["online"] and any(
            m["deployment"] == DEPLOYMENT and m["state"] == HEALTHY for m in d["models"]))
        self.serving = serving
        if serving and "first_serving" not in self.timeline:
            self.mark("first_serving")
            port = next(x.http_port for x in self.devices if x.id == serving[0])
            self.event(f"first replica serving: POST http://127.0.0.1:{port}/v1/models/{DEPLOYMENT}:predict "
                       f"({serving[0]}); requests start")
            if self.phase == "deploying":
                self.phase = "serving"
        if len(serving) >= self.o.replicas:
            self.mark("all_serving")
        if self.load is not None:
            ports = {x.id: x.http_port for x in self.devices if x.http_port is not None}
            self.load.targets = tuple((d, ports[d]) for d in serving if d in ports)
        self.maybe_start_chaos()

    def deploy(self, built: BuiltModel) -> None:
        import numpy as np

        from edge_agent.verify import load_trusted_keys
        from fleet.artifacts import ArtifactStore
        from fleet.model import DeploymentSpec
        from fleet.ops import deploy, publish_dir

        assert self.cfg is not None and self.store is not None
        cfg = self.cfg
        mv = publish_dir(self.store, ArtifactStore(cfg.artifact_dir), built.folder, load_trusted_keys(cfg.trusted_keys))
        self.mark("published")
        manifest = json.loads((built.folder / TARGET / "manifest.json").read_text())
        variants = tuple(f"{v['file']} ({v['precision']}, compile-time accuracy {v['fidelity']['accuracy']:.1%})"
                         for v in manifest.get("variants", []) if (v.get("fidelity") or {}).get("accuracy") is not None)
        self.model = ModelInfo(mv.name, mv.version, TARGET, built.cached, round(built.build_s, 2), variants)
        self.event(f"published {mv.name} v{mv.version}: {len(variants)} variant(s) for {TARGET}, signature verified")
        spec = DeploymentSpec(DEPLOYMENT, mv.name, mv.version, replicas=self.o.replicas, strategy="spread")
        self.event(deploy(self.store, spec) + f", spread across zones ({self.o.devices} device(s) to choose from)")
        self.mark("deployed")
        self.phase = "deploying"
        with np.load(built.eval_inputs) as npz:
            name = npz.files[0]
            inputs = npz[name]
        labels = np.load(built.eval_labels)
        self.load = LoadGenerator(inputs, labels, name, rate=self.o.requests_per_s, seed=self.o.seed,
                                  deployment=DEPLOYMENT).start()

    def loop(self) -> None:
        self.phase = "building"
        self.build.start()
        deadline = None if self.o.duration is None else self.t0 + self.o.duration
        while True:
            self.tick()
            self.notify()
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return
            if self.chaos is not None and self.chaos.done:
                self.event("chaos: schedule done")
                return
            time.sleep(TICK_S if deadline is None else max(0.0, min(TICK_S, deadline - now)))

    # --- shutdown: the reverse order, each step whatever happened before ---
    def stop(self) -> None:
        self.phase = "stopping"
        t = time.monotonic()
        with contextlib.suppress(Exception):
            self.notify(force=True)
        self._quietly("stop the fault injection", lambda: self.chaos.stop() if self.chaos else None)
        self._quietly("stop the request generator", lambda: self.load.stop() if self.load else None)
        self._quietly("stop the model build", self.build.cancel)
        # The controller first: stopped after the devices, it would see each goodbye as a device
        # gone and move (mark "replaced") every replica on the way out.
        if self.http is not None:
            self._quietly("stop the controller's HTTP API", self.http.stop)
        if self.controller is not None:
            self._quietly("stop the controller", self.controller.stop)
        if self.ctl_proc is not None:
            self._quietly("stop the controller process", self.ctl_proc.stop)
        threads = [threading.Thread(target=self._quietly, args=(f"stop {a.device_id}", a.stop), name="up-stop")
                   for a in self.agents]
        for th in threads:  # in parallel: each waits for its goodbye to be acknowledged
            th.start()
        for th in threads:
            th.join()
        for proxy in self.proxies.values():
            self._quietly("stop a link proxy", proxy.stop)
        if self.store is not None:
            self._quietly("mark the run's end in the store", self._mark_end)
            self._quietly("close the store", self.store.close)
        if self.broker is not None:
            name = "Mosquitto" if self.broker_kind == "mosquitto" else "the embedded broker"
            self._quietly(f"stop {name}", self.broker.stop)
        if self._lockfile is not None:
            self._lockfile.close()  # releases the lock
        self.mark("stopped")
        self.phase = "stopped"
        self.event(f"stopped everything in {time.monotonic() - t:.1f} s; files kept in {self.shown}")

    def _mark_end(self) -> None:
        """What the stopped controller can no longer record: the devices went offline with the run."""
        assert self.store is not None
        now = time.time()
        for d in self.store.list_devices():
            if d.online:
                self.store.set_online(d.id, False, now)
        self.store.append_event("stopped", "up", f"`edgectl up` stopped: {len(self.devices)} device(s) offline, "
                                "placements as they were", now)

    def _quietly(self, what: str, fn: Callable[[], object]) -> None:
        try:
            fn()
        except Exception as exc:  # the next steps must still run: nothing may be left behind
            log.exception("could not %s", what)
            self.error(f"could not {what}: {exc}")


def _have_mosquitto() -> bool:
    from fleet.broker import find_mosquitto

    return find_mosquitto() is not None


def run_up(options: UpOptions, *, on_status: Callable[[UpStatus], None] | None = None) -> UpReport:
    """Start the fleet, deploy the example, send requests until ``options.duration`` or Ctrl-C;
    stop everything; return what happened.

    A failure to start (a missing Mosquitto with ``broker="mosquitto"``, a broker that does not
    start, a failed model build, a workdir that is not ours) raises its ``EdgectlError`` once
    everything is stopped; what goes wrong afterwards (a failed replica, failed requests) is in
    ``UpReport.errors``. A Ctrl-C (``KeyboardInterrupt``) ends the run and is reported as
    ``interrupted``, not raised."""
    up = _Up(options, on_status)
    try:
        up.prepare_dirs()
        up.start_broker()
        up.notify(force=True)
        up.start_controller()
        up.start_agents()
        up.notify(force=True)
        up.loop()
    except KeyboardInterrupt:
        up.interrupted = True
        up.event("interrupted: stopping")
    finally:
        with _signals_deferred():
            up.stop()
            up.notify(force=True)
    return up.report()
