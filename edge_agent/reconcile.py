"""The reconcile loop: move what the device serves towards its desired state, one safe step at a time.

    desired (retained MQTT) ──► set_desired ──► step():
        for each deployment:  serving it already? ─ yes ─► done
                              failed here before?  ─ yes ─► done (reported once)
                              fetch manifest ─► check signature + fit ─► fetch files (chunks,
                              resumable) ─► check hashes ─► stage, fsync, rename ─► probe in a
                              child (load + self-test + memory) ─► memory budget ─► load in-process
                              ─► switch serving ─► save state ─► probation (regression guard)
        deployments no longer desired ─► unload, forget, collect their files
        probations ─► rollback when the guard trips

Every transition is reported (downloading, verifying, installing, loaded, serving, failed,
rolled_back, removed). Any failure leaves the previous version serving; the state file names
only versions that passed every check, so a restart (or kill -9 at any point) comes back
serving the last good version from disk without the network::

    rec = Reconciler(deps)
    rec.restore()              # at start-up, before the network
    rec.set_desired(desired)   # from the transport thread
    rec.step()                 # on the agent's worker thread, on each wake-up or tick
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from edge_agent.fetch import ChunkFetcher, FetchCancelled, FetchError
from edge_agent.guard import Probation
from edge_agent.metrics import MetricsSnapshot
from edge_agent.store import DeploymentState, Installed, InstallStore
from edge_agent.verify import SELFTEST_FILE, check_file, check_fit, check_manifest
from edgectl import wire
from edgectl.errors import EdgectlError
from edgectl.manifest import MANIFEST_NAME, parse_manifest

log = logging.getLogger(__name__)
MAX_FAILED_REMEMBERED = 16
RETRY_MIN_S, RETRY_MAX_S = 5.0, 300.0

Report = Callable[[str, str, "str | None", "str | None"], None]  # deployment, state, manifest sha, reason


class Serving(Protocol):
    """What the reconciler needs from the model server (``edge_agent.serving.ModelServer``)."""

    def load(self, name: str, path: Path, runtime: str, *, version: str, meta: dict[str, Any]) -> None: ...
    def rollback(self, name: str) -> None: ...
    def unload(self, name: str) -> None: ...
    def snapshot(self, name: str) -> MetricsSnapshot | None: ...
    def release_previous(self, name: str) -> None: ...


class ProbeOutcome(Protocol):
    @property
    def ok(self) -> bool: ...
    @property
    def reason(self) -> str | None: ...
    @property
    def rss_delta_bytes(self) -> int: ...


Prober = Callable[[Path, str, Path, str, float], ProbeOutcome]  # file, runtime, selftest, variant, atol


@dataclass
class ReconcileDeps:
    store: InstallStore
    fetcher: ChunkFetcher
    server: Serving
    probe: Prober
    caps: dict[str, Any]
    trusted: dict[str, Any]
    report: Report
    allow_unsigned: bool = False
    memory_budget_bytes: int | None = None
    clock: Callable[[], float] = time.monotonic


class Reconciler:
    def __init__(self, deps: ReconcileDeps) -> None:
        self.d = deps
        self.state = deps.store.load_state()
        self.wake = threading.Event()
        self._desired: wire.Desired | None = None
        self._lock = threading.Lock()
        self._cancel = threading.Event()
        self._probations: dict[str, Probation] = {}
        self._retry_at: dict[str, tuple[float, float]] = {}  # key → (when, backoff)
        self._acked: dict[str, int] = {}  # deployment → generation whose "serving" was reported
        self.applied_generation = self.state.generation

    # --- inputs ------------------------------------------------------------------------------
    def set_desired(self, desired: wire.Desired) -> bool:
        """Accept a newer desired state (False, and ignored, when its generation is older)."""
        with self._lock:
            newest = max(self.state.generation, self._desired.generation if self._desired else -1)
            if desired.generation < newest:
                log.info("desired generation %d is older than %d: ignored", desired.generation, newest)
                return False
            if desired == self._desired:
                return True  # the retained copy again, after a reconnect: keep transfers going
            self._desired = desired
            self._cancel.set()  # a transfer for an outdated deployment stops early
        self.wake.set()
        return True

    def interrupt(self) -> None:
        """Stop a transfer in progress and wake the loop (the agent is going away)."""
        self._cancel.set()
        self.wake.set()

    # --- start-up ----------------------------------------------------------------------------
    def restore(self) -> None:
        """Serve the last good versions from disk; fall back to the previous one if needed."""
        self.d.store.clean_staging()
        for name, ds in list(self.state.deployments.items()):
            for inst in (ds.current, ds.previous):
                if inst is None:
                    continue
                try:
                    self._load_installed(name, inst)
                except EdgectlError as exc:
                    log.error("cannot restore %s %s: %s", name, inst.key[:20], exc)
                    self.d.report(name, "failed", inst.manifest_sha256, f"restore: {exc}")
                    continue
                if inst is not ds.current:
                    assert ds.current is not None
                    self._remember_failure(ds, ds.current.key, "could not be restored from disk")
                    ds.current, ds.previous = inst, None
                    self.d.report(name, "rolled_back", inst.manifest_sha256, "current version unreadable")
                self.d.report(name, "serving", inst.manifest_sha256, None)
                break
            else:
                ds.current = ds.previous = None
        self.d.store.save_state(self.state)

    def _load_installed(self, name: str, inst: Installed) -> dict[str, Any]:
        path = self.d.store.installed(inst)
        if path is None:
            raise FetchError(f"{inst.key[:20]}… is not installed")
        manifest = check_manifest((path / MANIFEST_NAME).read_bytes(), inst.manifest_sha256, self.d.trusted,
                                  allow_unsigned=self.d.allow_unsigned)
        entry = check_fit(manifest, inst.variant, self.d.caps)
        for f in (inst.variant, SELFTEST_FILE):
            check_file(path / f, manifest["files"][f])
        self.d.server.load(name, path / inst.variant, str(entry["runtime"]), version=inst.manifest_sha256[:12],
                           meta=_meta(manifest, entry))
        return entry

    # --- the loop ----------------------------------------------------------------------------
    def step(self) -> None:
        with self._lock:
            desired = self._desired
            self._cancel.clear()
        if desired is not None:
            self._apply(desired)
        self._check_probations()

    def _apply(self, desired: wire.Desired) -> None:
        wanted = {d.name for d in desired.deployments}
        for name in sorted(set(self.state.deployments) - wanted):
            self._remove(name)
        complete = True
        for dep in desired.deployments:
            if self._cancel.is_set():
                return
            complete &= self._ensure(dep, desired.generation)
        if complete and desired.generation != self.state.generation:
            self.state.generation = desired.generation
            self.d.store.save_state(self.state)
        self.applied_generation = desired.generation

    def _ensure(self, dep: wire.Deployment, generation: int) -> bool:
        """One deployment towards desired; True when nothing is left to do for it."""
        ds = self.state.deployments.setdefault(dep.name, DeploymentState())
        want = Installed(dep.manifest_sha256, dep.variant)
        if ds.current == want:
            if self._acked.get(dep.name) != generation:
                # A new desired state that names what already serves (a rollback to it, a
                # controller that re-placed it here): say so, or the fleet waits for news.
                self._acked[dep.name] = generation
                self.d.report(dep.name, "serving", dep.manifest_sha256, None)
            return True
        if want.key in ds.failed:
            return True
        retry = self._retry_at.get(want.key)
        if retry and self.d.clock() < retry[0]:
            return False
        try:
            self._install_and_switch(dep, ds, want)
            self._acked[dep.name] = generation
        except FetchCancelled:
            return False
        except FetchError as exc:
            # The network or the artifact server: worth trying again, with backoff.
            backoff = min(RETRY_MAX_S, (retry[1] * 2) if retry else RETRY_MIN_S)
            self._retry_at[want.key] = (self.d.clock() + backoff, backoff)
            self.d.report(dep.name, "failed", dep.manifest_sha256, f"{exc} (retrying in {backoff:.0f} s)")
            return False
        except (EdgectlError, OSError) as exc:
            self._remember_failure(ds, want.key, str(exc))
            self.d.store.save_state(self.state)
            self.d.report(dep.name, "failed", dep.manifest_sha256, str(exc))
            return True
        self._retry_at.pop(want.key, None)
        return True

    def _install_and_switch(self, dep: wire.Deployment, ds: DeploymentState, want: Installed) -> None:
        report = self.d.report
        path = self.d.store.installed(want)
        if path is None:
            report(dep.name, "downloading", dep.manifest_sha256, None)
            staging = self.d.store.new_staging(want)
            self.d.fetcher.fetch(dep.manifest_sha256, staging / MANIFEST_NAME, cancel=self._cancel,
                                 max_bytes=dep.manifest_size)
            raw = (staging / MANIFEST_NAME).read_bytes()
            manifest = check_manifest(raw, dep.manifest_sha256, self.d.trusted, allow_unsigned=self.d.allow_unsigned)
            entry = check_fit(manifest, dep.variant, self.d.caps)  # before spending bandwidth on the model
            for f in (dep.variant, SELFTEST_FILE):
                self.d.fetcher.fetch(manifest["files"][f], staging / f, cancel=self._cancel)
            report(dep.name, "verifying", dep.manifest_sha256, None)
            for f in (dep.variant, SELFTEST_FILE):
                check_file(staging / f, manifest["files"][f])
            report(dep.name, "installing", dep.manifest_sha256, None)
            path = self.d.store.commit(staging, want)
        else:  # installed earlier (its signature was checked then): read it back from disk
            manifest = parse_manifest((path / MANIFEST_NAME).read_bytes(), f"installed manifest of {dep.name}")
            entry = check_fit(manifest, dep.variant, self.d.caps)
        runtime = str(entry["runtime"])
        probe = self.d.probe(path / dep.variant, runtime, path / SELFTEST_FILE, str(entry.get("variant")),
                             float(entry.get("selftest_atol", 1e-3)))
        if not probe.ok:
            raise ProbeFailed(f"{dep.variant} failed its self-test on this device: {probe.reason}")
        self._check_budget(dep.name, probe.rss_delta_bytes)
        baseline = self.d.server.snapshot(dep.name) if ds.current else None
        self.d.server.load(dep.name, path / dep.variant, runtime, version=dep.manifest_sha256[:12],
                           meta=_meta(manifest, entry))
        report(dep.name, "loaded", dep.manifest_sha256, None)
        if ds.current is not None and ds.current != want:
            ds.previous = ds.current
        ds.current = want
        ds.memory_bytes = probe.rss_delta_bytes
        self.d.store.save_state(self.state)
        report(dep.name, "serving", dep.manifest_sha256, None)
        if ds.previous is not None:
            self._probations[dep.name] = Probation(dep.guard, baseline, self.d.clock())
        self._collect()

    def _check_budget(self, name: str, need: int) -> None:
        budget = self.d.memory_budget_bytes
        if budget is None:
            return
        used = sum(ds.memory_bytes for n, ds in self.state.deployments.items() if n != name and ds.current)
        if used + need > budget:
            raise BudgetExceeded(
                f"needs {need >> 20} MB measured, the memory budget is {budget >> 20} MB with {used >> 20} MB "
                "used by other models: raise memory_budget_mb or deploy a smaller variant"
            )

    def _check_probations(self) -> None:
        for name, prob in list(self._probations.items()):
            ds = self.state.deployments.get(name)
            snap = self.d.server.snapshot(name)
            if ds is None or ds.current is None or snap is None:
                self._probations.pop(name, None)
                continue
            verdict = prob.check(snap, self.d.clock())
            if verdict.rollback:
                self._roll_back(name, ds, verdict.reason or "regression guard tripped")
            elif verdict.passed:
                self._probations.pop(name, None)
                self.d.server.release_previous(name)

    def _roll_back(self, name: str, ds: DeploymentState, reason: str) -> None:
        self._probations.pop(name, None)
        bad, good = ds.current, ds.previous
        assert bad is not None
        if good is None:
            return
        self.d.server.rollback(name)
        self._remember_failure(ds, bad.key, reason)
        ds.current, ds.previous = good, None
        self.d.store.save_state(self.state)
        self.d.report(name, "rolled_back", good.manifest_sha256, f"{bad.manifest_sha256[:12]}: {reason}")
        self._collect()

    def _remove(self, name: str) -> None:
        ds = self.state.deployments.pop(name)
        self._probations.pop(name, None)
        self.d.server.unload(name)
        self.d.store.save_state(self.state)
        self._collect()
        self.d.report(name, "removed", ds.current.manifest_sha256 if ds.current else None, None)

    def _remember_failure(self, ds: DeploymentState, key: str, reason: str) -> None:
        ds.failed[key] = reason
        while len(ds.failed) > MAX_FAILED_REMEMBERED:
            ds.failed.pop(next(iter(ds.failed)))

    def _collect(self) -> None:
        self.d.store.gc(self.d.store.referenced(self.state))


class ProbeFailed(EdgectlError):
    """The artifact crashed, failed to load or failed its self-test in the probe process."""


class BudgetExceeded(EdgectlError):
    """Loading the model would exceed the device's memory budget."""


def _meta(manifest: dict[str, Any], entry: dict[str, Any]) -> dict[str, Any]:
    model = manifest.get("model") or {}
    return {
        "model": model.get("name"), "precision": entry.get("precision"), "format": entry.get("format"),
        "variant": entry.get("variant"), "target": (manifest.get("target") or {}).get("name"),
    }
