"""The store interface: everything the controller remembers, behind one Protocol.

The controller keeps no state of its own that two replicas could disagree on: devices,
published models, deployments, placements, rollouts, desired-state generations and the event
log all live here. ``SqlStore`` (``fleet.store.sql``) implements it on SQLite and PostgreSQL.

    store = open_store("sqlite:////var/lib/edgectl/fleet.db")
    version = store.register_model("digits", variants, manifests)      # idempotent per manifest set
    store.create_deployment(DeploymentSpec("digits", "digits", version, replicas=2))
    snap = store.snapshot()                                            # one consistent read

Errors (one line each, saying what to do)::

    EdgectlError
    └── StoreError                 base of everything the store raises
        ├── NotFound               no such device / model version / deployment / rollout (exit 2)
        ├── Conflict               it already exists, or a concurrent change won (exit 2)
        ├── Invalid                a record the store refuses (unknown state, no variants) (exit 2)
        ├── SchemaError            the database is not an edgectl store, or a newer one
        └── StoreUnavailable       cannot open, locked past busy_timeout, disk full, I/O error
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

from edgectl.errors import EdgectlError
from fleet.model import DeploymentSpec, Device, Measured, Placement, Variant

ROLLOUT_STATES = ("running", "paused", "done", "rolled_back")
ACTIVE_ROLLOUT_STATES = ("running", "paused")


class StoreError(EdgectlError):
    """Base of the store's errors."""


class NotFound(StoreError):
    exit_code = 2


class Conflict(StoreError):
    exit_code = 2


class Invalid(StoreError):
    exit_code = 2


class SchemaError(StoreError):
    pass


class StoreUnavailable(StoreError):
    pass


@dataclass(frozen=True)
class ModelVersion:
    """One published version of a model: its manifests by target name."""

    name: str
    version: int
    registered: float
    manifests: Mapping[str, str]  # target → manifest sha256


@dataclass(frozen=True)
class Rollout:
    """A move of a deployment from one model version to another, step by step."""

    id: int
    deployment: str
    from_version: int | None
    to_version: int
    state: str  # running | paused | done | rolled_back
    canary_percent: float
    max_unavailable: int
    failure_threshold: float  # abort and roll back above this share of failed placements
    started: float
    updated: float
    reason: str | None = None


@dataclass(frozen=True)
class Event:
    id: int
    ts: float
    kind: str  # e.g. "device.offline", "placement.failed", "rollout.rolled_back"
    subject: str  # what it is about: a device id, a deployment name ...
    message: str
    data: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class TelemetryItem:
    """One ``devices/{id}/telemetry`` message, as ``record_telemetry_batch`` ingests it.

    ``resources`` uses the wire names (``memory_available_bytes``, ``disk_free_bytes``,
    ``cpu_percent``, ``temperature_c``); ``models`` maps a deployment name to its metrics
    (``p95_ms``, ``memory_bytes``, ``manifest_sha256``, optionally ``variant`` = the file).

    ``ts`` is when the controller received it (its clock: it becomes ``last_seen``, which
    ``mark_stale`` compares with the controller's now). ``sent`` is the message's own ``ts``
    (the agent's clock), used only to order one device's messages, so an offline buffer
    flushed after fresher telemetry does not overwrite it."""

    device_id: str
    resources: Mapping[str, Any]
    models: Mapping[str, Mapping[str, Any]]
    ts: float
    sent: float | None = None

    @property
    def order(self) -> float:
        return self.ts if self.sent is None else self.sent


@dataclass(frozen=True)
class ReportItem:
    """One ``devices/{id}/report`` message, as ``record_reports`` ingests it: the placement of
    ``deployment`` on ``device`` is now ``state``. ``ts`` is when the controller received it (it
    becomes the placement's ``since``); ``manifest_sha256`` (when the agent names it) must be the
    bound artifact's, or the report is about an older binding and is skipped."""

    deployment: str
    device: str
    state: str
    reason: str | None
    ts: float
    manifest_sha256: str | None = None


# What ``record_reports`` did with each report, in order.
APPLIED = "applied"  # written
STALE = "stale"  # names another artifact than the one bound now: skipped
GONE = "gone"  # no such placement (removed, re-placed elsewhere, a late report): skipped
INVALID = "invalid"  # a state the store does not know: skipped


@dataclass(frozen=True)
class Ingested:
    """What a telemetry batch did: devices it updated, brought back, or did not know."""

    updated: int = 0
    revived: tuple[str, ...] = ()  # were offline for missed heartbeats; heard from again
    unknown: tuple[str, ...] = ()  # no retained state seen yet: the controller should ignore them
    stale: int = 0  # older than the device's latest telemetry (a flushed offline buffer): skipped


@dataclass(frozen=True)
class Snapshot:
    """What the scheduler reads, taken in one read transaction so it is consistent.

    ``variants`` holds every (model, version) a deployment or an active rollout refers to."""

    devices: Mapping[str, Device]
    deployments: Mapping[str, DeploymentSpec]
    variants: Mapping[tuple[str, int], tuple[Variant, ...]]
    placements: tuple[Placement, ...]
    measured: tuple[Measured, ...]
    rollouts: tuple[Rollout, ...] = ()  # active ones only
    generations: Mapping[str, int] = field(default_factory=dict)


def variants_from_manifest(model: str, manifest: Mapping[str, Any], manifest_sha256: str,
                           manifest_size: int, version: int = 0) -> list[Variant]:
    """The ``Variant`` rows of one target's manifest (``ArtifactStore.put_dir`` gives sha and size).

    ``version`` may stay 0: ``register_model`` sets the version it assigns."""
    target = manifest["target"]
    return [
        Variant(
            model=model, version=version, target=str(target["name"]), arch=str(target["arch"]),
            isa=frozenset(target.get("isa", ())), runtime=str(v["runtime"]), precision=str(v["precision"]),
            format=str(v["format"]), file=str(v["file"]), size_bytes=int(v.get("fidelity", {}).get("size_bytes", 0)),
            manifest_sha256=manifest_sha256, manifest_size=manifest_size,
        )
        for v in manifest["variants"]
        if v.get("file") and not v.get("rejected") and not v.get("skipped")  # only what was written
    ]


class Store(Protocol):
    """Every method is one transaction; ``atomic()`` joins several into one (same thread).

    Times are ``time.time()`` seconds, passed in by the caller so tests and replays control
    them. Reads return frozen dataclasses from ``fleet.model`` and this module."""

    def atomic(self) -> AbstractContextManager[None]:
        """Run the store calls made inside the block (on this thread) as one write transaction."""
        ...

    def close(self) -> None: ...

    # --- devices ---------------------------------------------------------------------------
    def upsert_device(self, device: Device, capabilities: Mapping[str, Any]) -> bool:
        """From a retained state message; True if the device is new. Keeps ``draining`` and
        the telemetry fields (memory_available, disk_free, cpu_percent, temperature_c)."""
        ...

    def set_online(self, device_id: str, online: bool, ts: float) -> bool:
        """True if the flag changed. Offline here means the last will (heartbeats cannot revive it)."""
        ...

    def touch(self, device_id: str, ts: float) -> bool:
        """A heartbeat; True if it revived a device ``mark_stale`` had set offline."""
        ...

    def record_telemetry(self, device_id: str, resources: Mapping[str, Any],
                         models: Mapping[str, Mapping[str, Any]], ts: float, sent: float | None = None) -> bool:
        """One telemetry message (see ``TelemetryItem``); True if it revived the device."""
        ...

    def record_telemetry_batch(self, items: Sequence[TelemetryItem]) -> Ingested:
        """Many telemetry messages in one transaction: what the ingest loop should call."""
        ...

    def get_device(self, device_id: str) -> Device: ...
    def get_capabilities(self, device_id: str) -> dict[str, Any]: ...
    def list_devices(self) -> list[Device]: ...
    def set_draining(self, device_id: str, draining: bool) -> None: ...
    def delete_device(self, device_id: str) -> None: ...

    def mark_stale(self, older_than: float) -> list[str]:
        """Set offline every online device last heard of before ``older_than``; their ids."""
        ...

    def hot_devices(self, cpu_above: float) -> dict[str, float]:
        """Online devices whose last CPU reading is above ``cpu_above``: id → CPU %."""
        ...

    # --- desired-state generations -----------------------------------------------------------
    def bump_generation(self, device_id: str, digest: str | None = None) -> int:
        """The next generation for the device's desired state; monotonic, survives restarts.

        With ``digest`` (a hash of the desired content), the same digest as last time returns
        the same generation: re-deriving after a restart re-publishes, it does not bump."""
        ...

    def generation(self, device_id: str) -> int: ...

    # --- models -------------------------------------------------------------------------------
    def register_model(self, name: str, variants: Sequence[Variant], manifests: Mapping[str, Mapping[str, Any]],
                       version: int | None = None) -> int:
        """Register a verified compile output; the same manifest set again returns its version."""
        ...

    def list_models(self) -> list[ModelVersion]: ...
    def get_variants(self, model: str, version: int) -> list[Variant]: ...
    def get_manifest(self, model: str, version: int, target: str) -> dict[str, Any]: ...
    def latest_version(self, model: str) -> int: ...

    # --- deployments and placements ------------------------------------------------------------
    def create_deployment(self, spec: DeploymentSpec) -> None: ...
    def update_deployment(self, spec: DeploymentSpec) -> None: ...

    def delete_deployment(self, name: str) -> list[str]:
        """Delete it with its placements and rollouts; the devices whose desired state changes."""
        ...

    def get_deployment(self, name: str) -> DeploymentSpec: ...
    def list_deployments(self) -> list[DeploymentSpec]: ...

    def bind(self, placement: Placement) -> bool:
        """Idempotent: True if the row is new or now names another variant (state reset)."""
        ...

    def unbind(self, deployment: str, device: str) -> bool: ...

    def commit(self, binds: Sequence[Placement], unbinds: Sequence[Placement]) -> list[str]:
        """A Planner's binds and unbinds in one transaction; the devices whose desired state changed."""
        ...

    def set_placement_state(self, deployment: str, device: str, state: str, reason: str | None, ts: float,
                            manifest_sha256: str | None = None) -> bool:
        """False (nothing written) when ``manifest_sha256`` names another artifact than the bound one."""
        ...

    def record_reports(self, items: Sequence[ReportItem]) -> list[str]:
        """Many placement reports in one transaction, applied in the order given (one device's
        reports stay in the order it sent them); for each, ``APPLIED``, ``STALE``, ``GONE`` or
        ``INVALID`` (a report that cannot apply is skipped, the others still land)."""
        ...

    def list_placements(self, deployment: str | None = None, device: str | None = None) -> list[Placement]: ...

    # --- measurements -------------------------------------------------------------------------
    def record_measured(self, m: Measured, ts: float) -> None: ...
    def measured(self, device: str | None = None) -> list[Measured]: ...

    # --- rollouts -----------------------------------------------------------------------------
    def create_rollout(self, deployment: str, to_version: int, *, from_version: int | None, canary_percent: float,
                       max_unavailable: int, failure_threshold: float, ts: float) -> Rollout: ...
    def get_rollout(self, rollout_id: int) -> Rollout: ...
    def active_rollout(self, deployment: str) -> Rollout | None: ...
    def update_rollout(self, rollout_id: int, *, ts: float, state: str | None = None,
                       canary_percent: float | None = None, reason: str | None = None) -> Rollout: ...
    def list_rollouts(self, deployment: str | None = None) -> list[Rollout]: ...

    # --- events -------------------------------------------------------------------------------
    def append_event(self, kind: str, subject: str, message: str, ts: float,
                     data: Mapping[str, Any] | None = None) -> int: ...
    def last_event_id(self) -> int:
        """The newest event's id (0 when none): every change made through ``fleet.ops`` appends one."""
        ...

    def list_events(self, since_id: int = 0, limit: int = 100, subject: str | None = None) -> list[Event]: ...
    def prune_events(self, keep: int) -> int: ...

    # --- the scheduler's view -------------------------------------------------------------------
    def snapshot(self) -> Snapshot: ...


