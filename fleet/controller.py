"""The fleet controller: ingest what devices say, reconcile placements, publish desired state.

    devices/+/state ─────► upsert device, online/offline (the last will is instant) ─┐
    devices/+/telemetry ─► batched ingest every 0.5 s (resources, measured p95/memory) ├─► wake
    devices/+/report ────► batched at once: placement state (downloading … serving |  │
                           failed), one transaction per batch, wake after its commit ─┘
                                                                                      │
    reconcile pass (on wake, or every reconcile_interval_s):                          ▼
      missed heartbeats → offline · snapshot (one read) · per deployment: unbind replicas on
      offline/draining devices → rollout step (canary, batches within max_unavailable, roll back
      above the failure rate) → scale (schedule what is missing, drop the surplus) · commit the
      plan in one transaction · for each device whose placements changed: generation (same
      content → same generation) and the retained desired state
    artifacts/get (shared subscription) ─► ChunkServer from the artifact store, on its own thread

The transport's dispatcher thread only parses and queues (an offline state is the exception:
it is written at once). Reports are committed by the ingest thread as soon as one is queued,
everything queued meanwhile in the same transaction, in arrival order (so one device's reports
keep their order); the reconcile loop is woken only after that commit, so the pass it runs sees
the new states. A report about a placement that is gone, or about another artifact than the one
bound now, is skipped. What kill -9 loses: reports the transport has acknowledged to the broker
(paho acks on receipt) and not committed yet: its queue and the batch being written, as before
batching, when the queue was the longer one. The agent does not re-report after a controller
restart (its connection did not drop, and the desired state comes back with the same
generation): such a placement shows its last stored state until the device's desired state next
changes. Acknowledging reports only after their commit would close this (MQTT 5 manual acks).

All state lives in the store; what this process keeps (the ClusterView's caches, the digests of
what it last published, overload timers) is rebuilt from the store after a restart, and
re-publishing is idempotent, so kill -9 at any moment loses and duplicates nothing::

    ctl = Controller(load_fleet_config(Path("fleet.toml")))
    ctl.start()
    ...
    ctl.stop()
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import random
import threading
import time
from collections.abc import Callable
from typing import Any

from edgectl import wire
from edgectl.transport.base import Message, Transport, TransportError
from fleet.artifacts import ArtifactStore, ChunkServer
from fleet.config import FleetConfig
from fleet.model import DeploymentSpec, Device, Placement
from fleet.ops import FAILED, HEALTHY
from fleet.scheduler import ClusterView, Planner, schedule, variant_for
from fleet.store import Store, open_store
from fleet.store.base import APPLIED, ReportItem, Rollout, Snapshot, StoreError, TelemetryItem

log = logging.getLogger(__name__)
TELEMETRY_FLUSH_S = 0.5
STATE_BATCH = 500  # online states applied per transaction
FULL_PASS_EVERY_S = 60.0  # a timer tick runs a full pass at least this often, whatever else it sees
MAX_PASS_REST_S = 1.0  # the longest a woken pass waits for more wakes (see _reconcile_loop)
OVERLOAD_HYSTERESIS = 10.0  # percentage points below the threshold before a device counts as calm again


def device_from_capabilities(device_id: str, caps: dict[str, Any], ts: float) -> Device:
    runtimes = caps.get("runtimes") or {}
    labels = caps.get("labels") or {}
    return Device(
        id=device_id, arch=str(caps["arch"]), isa=frozenset(str(x) for x in caps.get("isa", [])),
        runtimes=frozenset(str(k) for k, v in runtimes.items() if v),
        labels={str(k): str(v) for k, v in labels.items()},
        online=True, last_seen=ts, memory_total=int(caps.get("memory_total_bytes") or 0),
        memory_budget=int(caps["memory_budget_bytes"]) if caps.get("memory_budget_bytes") else None,
        disk_free=int(caps.get("disk_free_bytes") or 0), cpu_count=int(caps.get("cpu_count") or 1),
        cpu_model=str(caps["cpu_model"]) if caps.get("cpu_model") else None,
    )


class Counters:
    """What /metrics exports; plain ints (a torn read of one is harmless)."""

    def __init__(self) -> None:
        self.messages = 0
        self.dropped = 0
        self.passes = 0
        self.decisions = 0
        self.unplaced = 0
        self.desired_published = 0
        self.last_pass_s = 0.0


class Controller:
    def __init__(self, cfg: FleetConfig, *, transport: Transport | None = None, store: Store | None = None,
                 clock: Callable[[], float] = time.time, rng: random.Random | None = None) -> None:
        self.cfg = cfg
        self.store = store if store is not None else open_store(cfg.store_url)
        self.artifacts = ArtifactStore(cfg.artifact_dir)
        self.transport = transport if transport is not None else _mqtt(cfg)
        self.chunks = ChunkServer(self.transport, self.artifacts)
        self.clock = clock
        self.rng = rng or random.Random()
        self.counters = Counters()
        self.wake = threading.Event()
        self._stop = threading.Event()
        self._telemetry: list[TelemetryItem] = []
        self._tlock = threading.Lock()
        self._reports: list[ReportItem] = []
        self._rlock = threading.Lock()  # guards _reports
        self._rflush = threading.Lock()  # one report batch at a time: batches commit in arrival order
        self._ingest_wake = threading.Event()  # a report is queued: flush now, not at the next tick
        self._states: dict[str, tuple[wire.DeviceState, float]] = {}  # online states to apply, newest per device
        self._slock = threading.Lock()
        self._apply = threading.RLock()  # a device's will must not land before its queued online state
        self._seen_event = -1  # the newest event id when the last pass began (others' writes append events)
        self._last_full = 0.0
        self._last_pass_end = 0.0  # time.monotonic() when the last pass ended
        self._retry = False  # a desired state to (re)publish: pass on the next tick
        self._digests: dict[str, str] = {}  # device → digest of the desired state last published
        self._unplaced_note: dict[str, str] = {}  # deployment → last "unplaced" reason logged as an event
        self._threads: list[threading.Thread] = []
        self._pass_events: list[tuple[str, str, str, float]] = []  # written with the pass's plan
        # Overload timers: soft state from telemetry; after a restart the windows start again.
        self._over_since: dict[str, float] = {}
        self._cooldown: dict[str, float] = {}

    # --- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        self.transport.subscribe(f"{wire.PREFIX}/devices/+/state", self._on_state)
        self.transport.subscribe(f"{wire.PREFIX}/devices/+/telemetry", self._on_telemetry)
        self.transport.subscribe(f"{wire.PREFIX}/devices/+/report", self._on_report)
        self.chunks.start()
        self.transport.add_connection_listener(self._on_connection)
        self.transport.start()
        for name, target in (("reconcile", self._reconcile_loop), ("ingest", self._ingest_loop)):
            t = threading.Thread(target=target, name=f"fleet-{name}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        self.wake.set()
        self._ingest_wake.set()
        for t in self._threads:
            t.join(timeout=10)
        self.transport.stop()
        self.chunks.stop()
        # Nothing arrives any more: what is queued is stored, so a clean stop loses no report.
        self.flush_reports()
        self.flush_states()
        self.flush_telemetry()
        self.store.close()

    def _on_connection(self, up: bool) -> None:
        if up:
            self._digests.clear()  # re-publish everything once: the broker may have lost retained state
            self.wake.set()

    # --- ingest (transport thread: parse, write small things, wake the loop) -----------------
    def _drop(self, msg: Message, exc: Exception) -> None:
        self.counters.dropped += 1
        log.warning("dropped message on %s: %s", msg.topic, exc)

    def _on_state(self, msg: Message) -> None:
        """Online states are applied in batches by the ingest loop (10k retained states after a
        restart: one transaction per batch, not three per device); offline ones at once."""
        self.counters.messages += 1
        parsed = wire.device_from_topic(msg.topic)
        if parsed is None or not msg.payload:
            return
        try:
            st = wire.parse_state(msg.payload, parsed[0])
        except wire.WireError as exc:
            self._drop(msg, exc)
            return
        now = self.clock()
        if st.online and st.capabilities is not None:
            with self._slock:
                self._states[st.device] = (st, now)
            return
        if st.online:
            return
        try:
            with self._apply:
                self.flush_states()  # an online state still queued for this device lands first
                if self.store.set_online(st.device, False, now):
                    self.store.append_event("offline", st.device, "disconnected (last will or clean stop)", now)
        except StoreError as exc:
            self._drop(msg, exc)
            return
        self.wake.set()

    def flush_states(self) -> None:
        with self._apply:
            self._flush_states()

    def _flush_states(self) -> None:
        with self._slock:
            batch, self._states = list(self._states.values()), {}
        changed_any = False
        for start in range(0, len(batch), STATE_BATCH):
            try:
                with self.store.atomic():
                    for st, now in batch[start:start + STATE_BATCH]:
                        assert st.capabilities is not None
                        new = self.store.upsert_device(device_from_capabilities(st.device, st.capabilities, now),
                                                       st.capabilities)
                        changed = self.store.set_online(st.device, True, now)
                        if new or changed:
                            changed_any = True
                            self.store.append_event("online", st.device,
                                                    "connected" + (" (new device)" if new else ""), now)
                        self._digests.pop(st.device, None)  # it may have missed its desired state
            except StoreError as exc:
                log.error("%d device states not stored: %s", len(batch[start:start + STATE_BATCH]), exc)
        if batch:
            self._retry = True  # re-publish the desired state of those devices on the next tick
        if changed_any:
            self.wake.set()

    def _on_telemetry(self, msg: Message) -> None:
        self.counters.messages += 1
        parsed = wire.device_from_topic(msg.topic)
        if parsed is None:
            return
        try:
            t = wire.parse_telemetry(msg.payload, parsed[0])
        except wire.WireError as exc:
            self._drop(msg, exc)
            return
        resources = {"cpu_percent": t.cpu_percent, "memory_total_bytes": t.memory_total,
                     "memory_available_bytes": t.memory_available, "disk_free_bytes": t.disk_free,
                     "temperature_c": t.temperature_c}
        # vars(), not dataclasses.asdict(): asdict deep-copies every field and was ~45 % of this handler.
        models = {name: dict(vars(m)) for name, m in t.models.items()}
        item = TelemetryItem(t.device, {k: v for k, v in resources.items() if v is not None}, models,
                             ts=self.clock(), sent=t.ts)
        with self._tlock:
            self._telemetry.append(item)

    def _on_report(self, msg: Message) -> None:
        """Queued for the ingest thread: a commit here would hold up every other handler."""
        self.counters.messages += 1
        parsed = wire.device_from_topic(msg.topic)
        if parsed is None:
            return
        try:
            r = wire.parse_report(msg.payload, parsed[0])
        except wire.WireError as exc:
            self._drop(msg, exc)
            return
        if r.state == "removed":
            return  # the placement is gone already: nothing to record
        item = ReportItem(r.deployment, r.device, r.state, r.reason, self.clock(), r.manifest_sha256)
        with self._rlock:
            self._reports.append(item)
        self._ingest_wake.set()

    def flush_reports(self) -> None:
        """Store every queued report in one transaction, then wake the reconcile loop if a
        replica came up or went down (after the commit: the pass must see the new state)."""
        with self._rflush:
            with self._rlock:
                batch, self._reports = self._reports, []
            if not batch:
                return
            try:
                with self.store.atomic():
                    outcomes = self.store.record_reports(batch)
                    applied = [it for it, outcome in zip(batch, outcomes, strict=True) if outcome == APPLIED]
                    for it in applied:
                        if it.state in FAILED:
                            self.store.append_event(it.state, it.deployment, f"{it.device}: {it.reason or it.state}",
                                                    it.ts)
            except StoreError as exc:
                # Locked by another writer, disk full: keep them (in order) for the next tick.
                log.error("%d placement reports not stored yet: %s", len(batch), exc)
                with self._rlock:
                    self._reports[:0] = batch
                return
        if any(it.state in (HEALTHY, *FAILED) for it in applied):
            self.wake.set()  # a replica came up or went down: rollouts and scaling move on

    def _ingest_loop(self) -> None:
        """Reports as soon as they come (each batch is what arrived while the last one was being
        written); online states and telemetry every TELEMETRY_FLUSH_S."""
        next_tick = time.monotonic() + TELEMETRY_FLUSH_S
        while not self._stop.is_set():
            self._ingest_wake.wait(max(0.0, next_tick - time.monotonic()))
            self._ingest_wake.clear()
            if self._stop.is_set():
                return
            try:
                self.flush_reports()
                if time.monotonic() >= next_tick:
                    next_tick = time.monotonic() + TELEMETRY_FLUSH_S
                    self.flush_states()
                    self.flush_telemetry()
            except Exception:  # the loop must outlive a bug in one batch
                log.exception("ingest failed")

    def flush_telemetry(self) -> None:
        with self._tlock:
            batch, self._telemetry = self._telemetry, []
        if not batch:
            return
        try:
            result = self.store.record_telemetry_batch(batch)
        except StoreError as exc:
            log.error("telemetry batch of %d not stored: %s", len(batch), exc)
            return
        for dev in result.revived:
            self.store.append_event("online", dev, "heard from again after missed heartbeats", self.clock())
        if result.revived:
            self.wake.set()

    # --- reconcile ---------------------------------------------------------------------------
    def _reconcile_loop(self) -> None:
        while not self._stop.is_set():
            woken = self.wake.wait(self.cfg.reconcile_interval_s)
            # A pass reads the whole fleet. During a rollout of 1,000 replicas report batches wake
            # it every few ms and passes of 0.3-0.6 s ran back to back, a core's worth of work
            # taken from the chunk server. A pass woken right after the last one first rests as
            # long as that one took (the wakes meanwhile join it): at most half the time in
            # passes. A wake after a quiet spell (a device dying) still gets its pass at once.
            rest = self._last_pass_end + self.counters.last_pass_s - time.monotonic()
            if woken and rest > 0:
                self._stop.wait(min(rest, MAX_PASS_REST_S))
            self.wake.clear()
            if self._stop.is_set():
                return
            try:
                if woken or self._tick_needs_pass():
                    self.reconcile_once()
            except Exception:  # the loop must outlive a bug in one pass
                log.exception("reconcile pass failed")

    def _tick_needs_pass(self) -> bool:
        """A timer tick with nothing woken: is a full pass (a snapshot of every device) needed?
        Yes for missed heartbeats, a change another process made (every ``fleet.ops`` write appends
        an event), a replica left unplaced or a desired state left unpublished, an overloaded device
        due for relief, or when the last full pass is FULL_PASS_EVERY_S old."""
        now = self.clock()
        if self._retry or self._unplaced_note or now - self._last_full >= FULL_PASS_EVERY_S:
            return True
        if self.store.last_event_id() != self._seen_event:
            return True
        stale = self.store.mark_stale(now - self.cfg.heartbeat_timeout_s)
        for dev in stale:
            self.store.append_event("offline", dev, f"no heartbeat for {self.cfg.heartbeat_timeout_s:g} s", now)
        if stale:
            return True
        return any(self.store.list_placements(device=d) for d in self._update_overload(now))

    def reconcile_once(self) -> None:
        t0 = time.perf_counter()
        now = self.clock()
        self._seen_event = self.store.last_event_id()  # before the snapshot: a later write triggers a pass
        self._retry = False
        for dev in self.store.mark_stale(now - self.cfg.heartbeat_timeout_s):
            self.store.append_event("offline", dev, f"no heartbeat for {self.cfg.heartbeat_timeout_s:g} s", now)
        snap = self.store.snapshot()
        view = ClusterView(snap.devices.values(), [v for vs in snap.variants.values() for v in vs],
                           snap.placements, snap.measured, now=now)
        planner = Planner()
        rollouts = {r.deployment: r for r in snap.rollouts}
        by_dep: dict[str, list[Placement]] = {}
        for p in snap.placements:
            by_dep.setdefault(p.deployment, []).append(p)
        relieve = self._update_overload(now)
        for spec in snap.deployments.values():
            try:
                self._reconcile_deployment(spec, by_dep.get(spec.name, []), snap, view, planner,
                                           rollouts.get(spec.name), now, relieve)
            except StoreError as exc:
                log.error("reconcile of %s failed: %s", spec.name, exc)
        events, self._pass_events = self._pass_events, []
        if planner.binds or planner.unbinds or events:
            # The plan and what it says about itself in one transaction: a thousand placements
            # were two thousand commits (fsyncs) before the first desired state went out.
            with self.store.atomic():
                self.store.commit(planner.binds, planner.unbinds)
                for kind, subject, message, ts in events:
                    self.store.append_event(kind, subject, message, ts)
            if planner.binds or planner.unbinds:
                snap = self.store.snapshot()
        self._publish_desired(snap)
        self._last_full = now
        self.counters.passes += 1
        self.counters.last_pass_s = time.perf_counter() - t0
        self._last_pass_end = time.monotonic()

    def _event(self, kind: str, subject: str, message: str, ts: float) -> None:
        """An event of this pass: stored with its plan (see ``reconcile_once``)."""
        self._pass_events.append((kind, subject, message, ts))

    def _update_overload(self, now: float) -> set[str]:
        """Devices whose CPU stayed over the threshold for the whole window (and are not cooling
        down). Reads only the devices above the calm line, not the whole fleet."""
        o = self.cfg.overload
        warm = self.store.hot_devices(o.cpu_percent - OVERLOAD_HYSTERESIS)
        for dev in [d for d in self._over_since if d not in warm]:
            del self._over_since[dev]
        relieve = set()
        for dev, cpu in warm.items():
            if cpu > o.cpu_percent:
                since = self._over_since.setdefault(dev, now)
                if now - since >= o.window_s and now >= self._cooldown.get(dev, 0.0):
                    relieve.add(dev)
        return relieve

    def _reconcile_deployment(self, spec: DeploymentSpec, placed: list[Placement], snap: Snapshot, view: ClusterView,
                              planner: Planner, rollout: Rollout | None, now: float, relieve: set[str]) -> None:
        alive = []
        spare = sum(d.online and not d.draining for d in snap.devices.values()) > len(placed)
        for p in placed:
            dev = snap.devices.get(p.device)
            if dev is None or not dev.online or dev.draining:
                why = "gone" if dev is None else "draining" if dev.draining else "offline"
                planner.unbind(p)
                self._event("replaced", spec.name, f"{p.device} is {why}: its replica moves", now)
                continue
            if p.device in relieve and spec.replicas is not None and spare:
                # One replica per overloaded device per window: move it, then let the device cool.
                relieve.discard(p.device)
                self._cooldown[p.device] = now + self.cfg.overload.cooldown_s
                self._over_since.pop(p.device, None)
                planner.unbind(p)
                self._event("moved", spec.name, f"{p.device}: CPU {dev.cpu_percent:.0f} % for "
                                        f"{self.cfg.overload.window_s:g} s; its replica moves", now)
                continue
            alive.append(p)
        if rollout is not None and self._rollout_step(spec, alive, snap, view, planner, rollout, now):
            return  # rolled back: the spec changed, the next pass scales against it
        healthy = [p for p in alive if p.state not in FAILED]
        want = spec.replicas
        need = (len(snap.devices) if want is None else want - len(healthy))
        if need > 0:
            decision = schedule(view, spec, need, planner, self.cfg.scheduler, self.rng)
            self.counters.decisions += len(decision.choices)
            for c in decision.choices:
                what = f"{c.device}: {c.variant.file} (v{c.variant.version}), score {c.score:.2f}"
                self._event("placed", spec.name, what, now)
            if want is not None and decision.unplaced:
                self.counters.unplaced += decision.unplaced
                note = f"{decision.unplaced} replica(s) not placed: {decision.reason_summary}"
                if self._unplaced_note.get(spec.name) != note:
                    self._unplaced_note[spec.name] = note
                    self._event("unplaced", spec.name, note, now)
            elif spec.name in self._unplaced_note and not decision.unplaced:
                del self._unplaced_note[spec.name]
        elif want is not None and need < 0:
            # Too many (a failed replica recovered, or replicas were lowered): drop the newest.
            surplus = sorted(healthy, key=lambda p: (p.state == HEALTHY, -p.since))[: -need]
            for p in surplus:
                planner.unbind(p)
                self._event("scaled_down", spec.name, f"{p.device}: more replicas than desired", now)

    def _rollout_step(self, spec: DeploymentSpec, alive: list[Placement], snap: Snapshot, view: ClusterView,
                      planner: Planner, r: Rollout, now: float) -> bool:
        """Move the next batch to the new version; True when the rollout was rolled back."""
        new = [p for p in alive if p.variant.version == r.to_version]
        old = [p for p in alive if p.variant.version != r.to_version]
        failed = [p for p in new if p.state in FAILED]
        if failed and len(failed) / max(1, len(new)) > r.failure_threshold and r.from_version is not None:
            back = tuple(view.variants_of(spec.model, r.from_version))
            for p in new:
                v = variant_for(snap.devices[p.device], back, spec) if back else None
                planner.unbind(p)
                if v is not None:
                    planner.bind(dataclasses.replace(p, variant=v, state="pending", reason=None, since=now),
                                 memory_bytes=0, disk_bytes=v.size_bytes)
            reason = f"{len(failed)} of {len(new)} updated replicas failed (threshold {r.failure_threshold:.0%})"
            with self.store.atomic():
                self.store.update_deployment(dataclasses.replace(spec, version=r.from_version))
                self.store.update_rollout(r.id, ts=now, state="rolled_back", reason=reason)
            self._event("rolled_back", spec.name, f"v{r.to_version} → v{r.from_version}: {reason}", now)
            return True
        if not old:
            if all(p.state == HEALTHY for p in new):
                self.store.update_rollout(r.id, ts=now, state="done", reason=None)
                self._event("rollout_done", spec.name, f"every replica runs v{r.to_version}", now)
            return False
        in_flight = [p for p in new if p.state not in (HEALTHY, *FAILED)]
        total = len(alive)
        canary = math.ceil(total * r.canary_percent / 100) if r.canary_percent > 0 else 0
        if canary and len(new) >= canary and any(p.state != HEALTHY for p in new):
            return False  # the canaries (and every batch after them) must serve before the next moves
        budget = (canary - len(new)) if canary and len(new) < canary else r.max_unavailable - len(in_flight)
        variants = tuple(view.variants_of(spec.model, r.to_version))
        for p in old[: max(0, budget)]:
            v = variant_for(snap.devices[p.device], variants, spec)
            if v is None:
                planner.unbind(p)  # no v{to} build for this device: it is re-placed elsewhere
                continue
            planner.unbind(p)
            planner.bind(dataclasses.replace(p, variant=v, state="pending", reason=None, since=now),
                         memory_bytes=0, disk_bytes=v.size_bytes)
        return False

    # --- desired state -----------------------------------------------------------------------
    def _publish_desired(self, snap: Snapshot) -> None:
        by_device: dict[str, list[Placement]] = {}
        for p in snap.placements:
            by_device.setdefault(p.device, []).append(p)
        todo: list[tuple[str, tuple[wire.Deployment, ...], str]] = []
        for device in sorted(set(by_device) | set(snap.generations) | set(self._digests)):
            deployments = tuple(
                wire.Deployment(p.deployment, p.variant.manifest_sha256, p.variant.manifest_size, p.variant.file)
                for p in sorted(by_device.get(device, []), key=lambda p: p.deployment)
            )
            digest = hashlib.sha256(json.dumps(
                [(d.name, d.manifest_sha256, d.variant) for d in deployments]).encode()).hexdigest()
            if self._digests.get(device) != digest:
                todo.append((device, deployments, digest))
        if not todo:
            return
        with self.store.atomic():  # one transaction for the generations, not one per device
            generations = [self.store.bump_generation(device, digest) for device, _, digest in todo]
        for (device, deployments, digest), generation in zip(todo, generations, strict=True):
            # (Same content → same generation: a desired state not published now keeps its number.)
            try:
                self.transport.publish(wire.desired_topic(device),
                                       wire.desired_message(wire.Desired(generation, deployments)), retain=True)
            except TransportError as exc:
                log.info("desired state for %s not published yet (%s)", device, exc)
                self._retry = True
                continue
            self._digests[device] = digest
            self.counters.desired_published += 1


def _mqtt(cfg: FleetConfig) -> Transport:
    from edgectl.transport.mqtt import MqttSettings, MqttTransport

    return MqttTransport(MqttSettings(url=cfg.broker_url, client_id=f"edgectl-controller-{cfg.controller_id}"))


def serve(cfg: FleetConfig) -> int:
    """Run the controller (and its HTTP API) until SIGINT/SIGTERM."""
    import signal

    from fleet.http_api import FleetHttp

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ctl = Controller(cfg)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    ctl.start()
    http = FleetHttp(ctl, cfg.http_host, cfg.http_port).start()
    log.info("controller %s running: broker %s, store %s, HTTP on %s:%d", cfg.controller_id, cfg.broker_url,
             cfg.store_url, cfg.http_host, http.port)
    stop.wait()
    http.stop()
    ctl.stop()
    return 0
