"""Fault injection for ``edgectl up --chaos``: named faults, one after another, each measured.

    schedule = parse_chaos("kill-device,broker-restart", seed=0)   # or "all", or "random:5"
    runner = ChaosRunner(fleet, ChaosOptions(schedule), store_url)  # fleet: the ChaosFleet of a run
    runner.start() … runner.done … runner.report()                   # ChaosReport: table + to_dict()

Each fault, once the deployment serves its desired replicas::

    kill-device         a serving device's agent dies (socket dropped without DISCONNECT, threads
                        stopped, nothing saved); it is started again from its data dir after fault_s
    cut-link            a serving device's TCP link is cut (proxy closes both sockets) and refused
                        for fault_s
    broker-restart      kill -9 of the broker (Mosquitto or the embedded one, which loses every
                        session and retained message), started again on the same port after fault_s
    controller-restart  kill -9 of the controller process, started again after fault_s (SQLite
                        store and artifact dir kept)
    slow-link           every spare device's link (broker → device) throttled to slow_bytes_per_s,
                        then a serving device is drained: its replica must travel a slow link
    corrupt-chunk       every spare device's link flips a byte in its next corrupt_chunks chunk
                        replies, then a serving device is drained
    disk-full           every spare device reports no free space to its fetcher (simulated, the
                        disk is not filled) for fault_s, then a serving device is drained

Recovery time is from injection until the deployment has its desired replicas ``serving`` on
online, undrained devices that are not faulted and that the controller heard from after the
fault (after the broker or controller came back, for those two). Invariants checked at the end:
every fault recovered within ``recovery_timeout_s``; every artifact installed on every device
verifies (manifest sha256 = its folder name, signature by a trusted key, file hashes); the
store's deployments are the same before and after.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from edgectl.errors import EdgectlError, UserError

log = logging.getLogger(__name__)

FAULTS = ("kill-device", "cut-link", "broker-restart", "controller-restart", "slow-link", "corrupt-chunk",
          "disk-full")
POLL_S = 0.1


def parse_chaos(spec: str, seed: int) -> tuple[str, ...]:
    """``"kill-device,cut-link"`` (in that order), ``"all"`` (every fault once, in a seeded
    order) or ``"random:N"`` (N faults drawn with the seed)."""
    spec = spec.strip()
    rng = random.Random(seed)
    if spec == "all":
        faults = list(FAULTS)
        rng.shuffle(faults)
        return tuple(faults)
    if spec.startswith("random"):
        _, _, n = spec.partition(":")
        try:
            count = int(n or 5)
        except ValueError:
            raise UserError(f"--chaos {spec!r}: random:N needs a number, e.g. random:5") from None
        if not 1 <= count <= 100:
            raise UserError(f"--chaos {spec!r}: N must be from 1 to 100")
        return tuple(rng.choice(FAULTS) for _ in range(count))
    names = tuple(s.strip() for s in spec.split(",") if s.strip())
    bad = [n for n in names if n not in FAULTS]
    if not names or bad:
        raise UserError(f"--chaos {spec!r}: unknown fault {', '.join(bad) or '(none)'}; "
                        f"use {', '.join(FAULTS)}, all or random:N")
    return names


@dataclass(frozen=True)
class ChaosOptions:
    faults: tuple[str, ...]
    seed: int = 0
    fault_s: float = 6.0  # how long a device, link, broker, controller or disk stays faulted
    recovery_timeout_s: float = 90.0
    settle_timeout_s: float = 120.0  # before a fault: wait this long at most for a steady fleet
    slow_bytes_per_s: int = 16 << 10
    corrupt_chunks: int = 2


class ChaosFleet(Protocol):
    """What the runner needs from a running fleet (``fleet.up`` implements it)."""

    deployment: str
    replicas: int

    def device_ids(self) -> list[str]: ...
    def kill_device(self, device: str) -> None: ...
    def restart_device(self, device: str) -> None: ...
    def cut_link(self, device: str, seconds: float) -> None: ...
    def throttle_link(self, device: str, bytes_per_s: float | None) -> None: ...
    def corrupt_link(self, device: str, chunks: int) -> int: ...  # returns payloads damaged so far
    def fill_disk(self, device: str, full: bool) -> None: ...
    def kill_broker(self) -> None: ...
    def start_broker(self) -> None: ...
    def kill_controller(self) -> int: ...  # the pid killed
    def start_controller(self) -> int: ...
    def data_dirs(self) -> dict[str, Path]: ...
    def trusted_keys(self) -> dict[str, bytes]: ...
    def event(self, text: str) -> None: ...


@dataclass
class FaultResult:
    fault: str
    target: str  # a device, "broker", "controller", or "spares of dev-03"
    injected_at_s: float  # seconds since the run started
    fault_s: float | None  # how long it was held (None: until recovered)
    recovered_s: float | None  # from injection; None = not within the timeout
    effect: str  # what the fault measurably did
    took_effect: bool
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.recovered_s is not None and self.took_effect and self.error is None


@dataclass(frozen=True)
class Invariant:
    name: str
    held: bool
    measured: str


@dataclass
class ChaosReport:
    seed: int
    schedule: tuple[str, ...]
    faults: list[FaultResult] = field(default_factory=list)
    invariants: list[Invariant] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.invariants) and all(i.held for i in self.invariants)

    def to_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "schedule": list(self.schedule), "ok": self.ok,
                "faults": [{**vars(f), "ok": f.ok} for f in self.faults],
                "invariants": [vars(i) for i in self.invariants]}

    def lines(self) -> list[str]:
        out = [f"chaos (seed {self.seed}): {len(self.faults)} of {len(self.schedule)} fault(s) run",
               f"    {'fault':<19} {'target':<18} {'at':>7} {'held':>6} {'recovered':>10}  effect"]
        for f in self.faults:
            held = "-" if f.fault_s is None else f"{f.fault_s:.1f} s"
            rec = "NOT" if f.recovered_s is None else f"{f.recovered_s:.1f} s"
            why = f" ({f.error})" if f.error else ""
            out.append(f"    {f.fault:<19} {f.target:<18} {f.injected_at_s:>5.1f} s {held:>6} {rec:>10}  "
                       f"{f.effect}{why}")
        for i in self.invariants:
            out.append(f"    [{'held' if i.held else 'FAILED'}] {i.name}: {i.measured}")
        return out


# --- invariants that read the fleet's files and store -----------------------------------------------

def check_installs(data_dirs: dict[str, Path], trusted: dict[str, bytes]) -> tuple[int, list[str]]:
    """Every artifact installed on every device, against its manifest: the manifest's sha256 is
    the one in the folder's name, its signature is by a trusted key, and the files hash as it says.
    Returns (artifacts checked, problems)."""
    from edge_agent.store import InstallStore
    from edge_agent.verify import SELFTEST_FILE, check_file, check_manifest
    from edgectl.manifest import MANIFEST_NAME

    checked, bad = 0, []
    for device, root in sorted(data_dirs.items()):
        folder = root / "artifacts"
        for art in sorted(folder.iterdir()) if folder.is_dir() else []:
            if art.name.startswith("."):
                continue
            sha, _, variant = art.name.partition(".")
            checked += 1
            try:
                manifest = check_manifest((art / MANIFEST_NAME).read_bytes(), sha, trusted, allow_unsigned=False)
                for f in (variant, SELFTEST_FILE):
                    check_file(art / f, manifest["files"][f])
            except (EdgectlError, OSError, KeyError) as exc:
                bad.append(f"{device}: {art.name[:24]}…: {exc}")
        try:
            state = InstallStore(root).load_state()
        except (EdgectlError, OSError) as exc:
            bad.append(f"{device}: state.json unreadable: {exc}")
            continue
        for name, ds in state.deployments.items():
            for inst in (ds.current, ds.previous):
                if inst is not None and not (folder / inst.key).is_dir():
                    bad.append(f"{device}: {name} names {inst.key[:24]}…, which is not installed")
    return checked, bad


def deployments_of(store: Any) -> list[tuple[Any, ...]]:
    return sorted((d.name, d.model, d.version, d.replicas) for d in store.list_deployments())


# --- the runner ------------------------------------------------------------------------------------

class ChaosRunner:
    """Runs the schedule on its own thread; ``report()`` once ``done``."""

    def __init__(self, fleet: ChaosFleet, options: ChaosOptions, store_url: str,
                 elapsed: Callable[[], float]) -> None:
        self.fleet = fleet
        self.o = options
        self.store_url = store_url
        self.elapsed = elapsed
        self.rng = random.Random(options.seed)
        self.result = ChaosReport(options.seed, options.faults)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="up-chaos", daemon=True)
        self.store: Any = None

    def start(self) -> ChaosRunner:
        self._thread.start()
        return self

    @property
    def done(self) -> bool:
        return self._thread.ident is not None and not self._thread.is_alive()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(60)

    def report(self) -> ChaosReport:
        return self.result

    # --- the fleet as the store sees it ---
    def _snapshot(self) -> tuple[dict[str, Any], list[Any]]:
        devices = {d.id: d for d in self.store.list_devices()}
        return devices, self.store.list_placements(self.fleet.deployment)

    def serving(self, *, excluded: frozenset[str] = frozenset(), since: float = 0.0,
                since_for: dict[str, float] | None = None) -> list[str]:
        """Devices serving the deployment: online, not draining, not excluded, heard from after
        ``since`` (or their entry in ``since_for``)."""
        from fleet.ops import HEALTHY

        devices, placements = self._snapshot()
        out = []
        for p in placements:
            d = devices.get(p.device)
            if p.state != HEALTHY or d is None or not d.online or d.draining or p.device in excluded:
                continue
            if d.last_seen < (since_for or {}).get(p.device, since):
                continue
            out.append(p.device)
        return sorted(out)

    def _wait(self, what: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self._stop.is_set():
            try:
                if what():
                    return True
            except Exception as exc:  # the store may be briefly busy (a controller being killed mid-write)
                log.info("chaos check failed (%s); trying again", exc)
            if time.monotonic() > deadline:
                return False
            time.sleep(POLL_S)
        return False

    # --- the schedule ---
    def _main(self) -> None:
        from fleet.store import open_store

        self.store = open_store(self.store_url)
        try:
            before = deployments_of(self.store)
            for fault in self.o.faults:
                if self._stop.is_set():
                    break
                if not self._wait(lambda: len(self.serving()) >= self.fleet.replicas, self.o.settle_timeout_s):
                    self.fleet.event(f"chaos: the fleet was not steady within {self.o.settle_timeout_s:g} s; "
                                     f"injecting {fault} anyway")
                try:
                    self.result.faults.append(self._run(fault))
                except Exception as exc:  # one broken fault must not hide the others' results
                    log.exception("chaos fault %s failed", fault)
                    self.result.faults.append(FaultResult(fault, "?", round(self.elapsed(), 2), None, None,
                                                          "not injected", False, f"{exc.__class__.__name__}: {exc}"))
                last = self.result.faults[-1]
                self.fleet.event(f"chaos: {fault} on {last.target}: " + (
                    f"recovered in {last.recovered_s:.1f} s" if last.recovered_s is not None else "NOT recovered")
                    + f"; {last.effect}")
            self._settle_and_check(before)
        finally:
            self.store.close()

    def _settle_and_check(self, before: list[tuple[Any, ...]]) -> None:
        r, o = self.result, self.o
        self._wait(lambda: len(self.serving()) >= self.fleet.replicas, o.recovery_timeout_s)
        after = deployments_of(self.store)
        times = ", ".join(f"{f.fault} {f.recovered_s:.1f} s" if f.recovered_s is not None else f"{f.fault} NOT"
                          for f in r.faults)
        recovered = all(f.recovered_s is not None for f in r.faults) and len(r.faults) == len(r.schedule)
        r.invariants.append(Invariant(
            f"every deployment back to its {self.fleet.replicas} replica(s) within {o.recovery_timeout_s:g} s",
            recovered, times or "no fault ran"))
        inert = [f"{f.fault} ({f.effect})" for f in r.faults if not f.took_effect or f.error]
        r.invariants.append(Invariant("every fault took effect", not inert,
                                      "; ".join(inert) if inert else f"{len(r.faults)} of {len(r.faults)}"))
        checked, bad = check_installs(self.fleet.data_dirs(), self.fleet.trusted_keys())
        r.invariants.append(Invariant(
            "no artifact accepted with a bad hash or signature", not bad and checked > 0,
            f"{checked} installed artifact(s) on {len(self.fleet.data_dirs())} device(s) verified, "
            f"{len(bad)} bad" + (f": {'; '.join(bad[:3])}" if bad else "")))
        r.invariants.append(Invariant(
            "no deployment lost", before == after and bool(before),
            f"{len(before)} deployment(s) before, {len(after)} after" + ("" if before == after else
                                                                       f": {before} → {after}")))

    def _run(self, fault: str) -> FaultResult:
        serving = self.serving()
        if not serving:
            raise EdgectlError("no device serves the deployment: nothing to fault")
        victim = self.rng.choice(serving)
        t_inj = time.time()
        at = round(self.elapsed(), 2)
        self.fleet.event(f"chaos: injecting {fault}")
        if fault in ("kill-device", "cut-link"):
            return self._device_down(fault, victim, t_inj, at)
        if fault in ("broker-restart", "controller-restart"):
            return self._component_restart(fault, t_inj, at)
        return self._spares_fault(fault, victim, serving, t_inj, at)

    def _device_down(self, fault: str, victim: str, t_inj: float, at: float) -> FaultResult:
        o, f = self.o, self.fleet
        if fault == "kill-device":
            f.kill_device(victim)
        else:
            f.cut_link(victim, o.fault_s)
        offline_at: list[float] = []
        restored: dict[str, float] = {}
        recovered: list[float] = []

        def check() -> bool:
            down = not restored
            if down and time.time() - t_inj >= o.fault_s:
                if fault == "kill-device":
                    f.restart_device(victim)
                restored[victim] = time.time()  # heard from after this, it counts again
            devices, _ = self._snapshot()
            if not offline_at and not devices[victim].online:
                offline_at.append(time.time() - t_inj)
            excluded = frozenset({victim}) if down else frozenset()
            if len(self.serving(excluded=excluded, since_for=restored)) >= f.replicas:
                recovered.append(round(time.time() - t_inj, 2))
                return True
            return False

        self._wait(check, o.fault_s + o.recovery_timeout_s)
        if not restored:  # recovered elsewhere before the fault's time was up: bring it back now
            self._wait(lambda: time.time() - t_inj >= o.fault_s, o.fault_s + 1)
            if fault == "kill-device":
                f.restart_device(victim)
        effect = (f"fleet saw it offline after {offline_at[0]:.1f} s" if offline_at
                  else "the controller never saw it offline")
        return FaultResult(fault, victim, at, o.fault_s, recovered[0] if recovered else None, effect,
                           bool(offline_at))

    def _component_restart(self, fault: str, t_inj: float, at: float) -> FaultResult:
        o, f = self.o, self.fleet
        if fault == "broker-restart":
            f.kill_broker()
            effect = "the broker killed (-9)"
        else:
            effect = f"controller pid {f.kill_controller()} killed (-9)"
        time.sleep(o.fault_s)
        if fault == "broker-restart":
            f.start_broker()
            effect += " and started again on the same port"
        else:
            effect += f", pid {f.start_controller()} started on the same store"
        t_back = time.time()
        ok = self._wait(lambda: len(self.serving(since=t_back)) >= f.replicas, o.recovery_timeout_s)
        devices, _ = self._snapshot()
        heard = sum(d.last_seen >= t_back and d.online for d in devices.values())
        effect += f"; {heard}/{len(devices)} device(s) heard from since"
        return FaultResult(fault, fault.split("-")[0], at, o.fault_s, round(time.time() - t_inj, 2) if ok else None,
                           effect, True)

    def _spares_fault(self, fault: str, victim: str, serving: list[str], t_inj: float, at: float) -> FaultResult:
        from fleet.ops import FAILED

        o, f = self.o, self.fleet
        spares = [d for d in f.device_ids() if d not in serving]
        if not spares:
            raise EdgectlError(f"{fault} needs a device without a replica: start more --devices")
        event0 = self.store.last_event_id()
        for d in spares:
            if fault == "slow-link":
                f.throttle_link(d, o.slow_bytes_per_s)
            elif fault == "corrupt-chunk":
                f.corrupt_link(d, o.corrupt_chunks)
            else:
                f.fill_disk(d, True)
        self.store.set_draining(victim, True)
        self.store.append_event("draining", victim, f"chaos {fault}: its replica must move to a faulted spare",
                                time.time())
        cleared: list[float] = []

        def clear() -> None:
            if cleared:
                return
            cleared.append(time.time() - t_inj)
            for d in spares:
                if fault == "slow-link":
                    f.throttle_link(d, None)
                elif fault == "disk-full":
                    f.fill_disk(d, False)

        def check() -> bool:
            if fault == "disk-full" and time.time() - t_inj >= o.fault_s:
                clear()
            return len(self.serving(excluded=frozenset({victim}))) >= f.replicas

        ok = self._wait(check, o.recovery_timeout_s + (o.fault_s if fault == "disk-full" else 0))
        recovered = round(time.time() - t_inj, 2) if ok else None
        clear()
        self.store.set_draining(victim, False)
        self.store.append_event("undrained", victim, f"chaos {fault} over", time.time())
        now_serving = self.serving()
        moved = [d for d in now_serving if d in spares]
        target = f"spares of {victim}"
        if fault == "corrupt-chunk":
            damaged = sum(f.corrupt_link(d, 0) for d in spares)  # how many so far; and disarmed
            return FaultResult(fault, target, at, None, recovered,
                               f"{damaged} chunk payload(s) damaged in flight, replica now on "
                               f"{', '.join(moved) or '?'}", damaged > 0)
        if fault == "slow-link":
            return FaultResult(fault, target, at, cleared[0], recovered,
                               f"replica moved to {', '.join(moved) or '?'} over a {o.slow_bytes_per_s >> 10} KiB/s "
                               "link", bool(moved))
        failures = [e for e in self.store.list_events(since_id=event0, limit=1000)
                    if e.kind in FAILED and "disk" in e.message]
        why = failures[0].message if failures else "no install failed for lack of disk"
        return FaultResult(fault, target, at, o.fault_s, recovered,
                           f"{len(failures)} install(s) refused cleanly ({why[:200]})", bool(failures))
