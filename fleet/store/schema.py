"""The store's tables (SQLAlchemy Core) and the row → dataclass conversions.

Portable between SQLite and PostgreSQL: JSON columns for lists and maps, epoch seconds as
doubles, constraints doing the work that would otherwise need a process-local lock (a
partial unique index allows one active rollout per deployment; generation bumps are single
upserts). ``SCHEMA_VERSION`` is stored in ``schema_version``; bump it with a migration when a
table changes.

    devices ──< placements >── deployments ──> models ──< variants
       │            └──> variants                 └──< manifests
       └──< measured >── variants        rollouts >── deployments
    generations (per device id, no FK: survives forgetting a device)     events (append-only)
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Double,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from fleet.model import DeploymentSpec, Device, Measured, Placement, Variant
from fleet.store.base import ACTIVE_ROLLOUT_STATES, Event, Rollout

SCHEMA_VERSION = 1
NAME = 128  # ids and names: wire.valid_name allows 128 characters
SHA = 64

metadata = MetaData()

schema_version = Table("schema_version", metadata, Column("version", Integer, nullable=False))

devices = Table(
    "devices", metadata,
    Column("id", String(NAME), primary_key=True),
    Column("arch", String(32), nullable=False),
    Column("isa", JSON, nullable=False),
    Column("runtimes", JSON, nullable=False),
    Column("labels", JSON, nullable=False),
    Column("capabilities", JSON, nullable=False),
    Column("online", Boolean, nullable=False),
    # Why it is offline: "will" (the broker said so; only a state message brings it back) or
    # "stale" (missed heartbeats; its next telemetry brings it back).
    Column("offline_cause", String(16)),
    Column("draining", Boolean, nullable=False, default=False),
    Column("last_seen", Double, nullable=False),
    Column("telemetry_ts", Double, nullable=False, default=0.0),  # newest telemetry applied (its ``sent``)
    Column("memory_total", BigInteger, nullable=False),
    Column("memory_available", BigInteger, nullable=False),
    Column("memory_budget", BigInteger),
    Column("disk_free", BigInteger, nullable=False),
    Column("cpu_percent", Double, nullable=False),
    Column("temperature_c", Double),
    Column("cpu_count", Integer, nullable=False),
    Column("cpu_model", String(NAME)),
)
Index("devices_online_last_seen", devices.c.online, devices.c.last_seen)  # mark_stale's scan

models = Table(
    "models", metadata,
    Column("name", String(NAME), primary_key=True),
    Column("version", Integer, primary_key=True),
    # sha256 over the sorted "target=manifest_sha256" lines: re-publishing is a lookup.
    Column("manifest_set", String(SHA), nullable=False),
    Column("registered", Double, nullable=False),
    UniqueConstraint("name", "manifest_set", name="models_manifest_set"),
)

manifests = Table(
    "manifests", metadata,
    Column("model", String(NAME), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("target", String(NAME), primary_key=True),
    Column("sha256", String(SHA), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("body", JSON, nullable=False),
    ForeignKeyConstraint(["model", "version"], ["models.name", "models.version"], ondelete="CASCADE"),
)

variants = Table(
    "variants", metadata,
    Column("key", String(512), primary_key=True),  # Variant.key: model@version/target/file
    Column("model", String(NAME), nullable=False),
    Column("version", Integer, nullable=False),
    Column("target", String(NAME), nullable=False),
    Column("file", String(NAME), nullable=False),
    Column("arch", String(32), nullable=False),
    Column("isa", JSON, nullable=False),
    Column("runtime", String(32), nullable=False),
    Column("precision", String(16), nullable=False),
    Column("format", String(16), nullable=False),
    Column("size_bytes", BigInteger, nullable=False),
    Column("manifest_sha256", String(SHA), nullable=False, index=True),
    Column("manifest_size", BigInteger, nullable=False),
    ForeignKeyConstraint(["model", "version"], ["models.name", "models.version"], ondelete="CASCADE"),
)
Index("variants_model_version", variants.c.model, variants.c.version)

deployments = Table(
    "deployments", metadata,
    Column("name", String(NAME), primary_key=True),
    Column("model", String(NAME), nullable=False),
    Column("version", Integer, nullable=False),
    Column("replicas", Integer),  # NULL = every matching device
    Column("selector", JSON, nullable=False),
    Column("max_p95_ms", Double),
    Column("strategy", String(16), nullable=False),
    Column("canary_percent", Double, nullable=False),
    Column("max_unavailable", Integer, nullable=False),
    Column("precisions", JSON, nullable=False),
    Column("created", Double, nullable=False),
    Column("updated", Double, nullable=False),
    ForeignKeyConstraint(["model", "version"], ["models.name", "models.version"]),
)

placements = Table(
    "placements", metadata,
    Column("deployment", String(NAME), ForeignKey("deployments.name", ondelete="CASCADE"), primary_key=True),
    Column("device", String(NAME), ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True, index=True),
    Column("variant_key", String(512), ForeignKey("variants.key"), nullable=False),
    Column("manifest_sha256", String(SHA), nullable=False),  # matches telemetry without a join
    Column("state", String(16), nullable=False),
    Column("reason", Text),
    Column("since", Double, nullable=False),
)

generations = Table(
    "generations", metadata,
    Column("device", String(NAME), primary_key=True),
    Column("generation", BigInteger, nullable=False),
    Column("digest", String(SHA)),  # of the desired content last given this generation
)

measured = Table(
    "measured", metadata,
    Column("device", String(NAME), ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True),
    Column("variant_key", String(512), ForeignKey("variants.key", ondelete="CASCADE"), primary_key=True),
    Column("p95_ms", Double),
    Column("memory_bytes", BigInteger),
    Column("ts", Double, nullable=False),
)

rollouts = Table(
    "rollouts", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("deployment", String(NAME), ForeignKey("deployments.name", ondelete="CASCADE"), nullable=False),
    Column("from_version", Integer),
    Column("to_version", Integer, nullable=False),
    Column("state", String(16), nullable=False),
    Column("canary_percent", Double, nullable=False),
    Column("max_unavailable", Integer, nullable=False),
    Column("failure_threshold", Double, nullable=False),
    Column("started", Double, nullable=False),
    Column("updated", Double, nullable=False),
    Column("reason", Text),
)
# One running-or-paused rollout per deployment, enforced by the database itself so that two
# controllers cannot both start one.
_active = rollouts.c.state.in_(ACTIVE_ROLLOUT_STATES)
Index("rollouts_one_active", rollouts.c.deployment, unique=True, sqlite_where=_active, postgresql_where=_active)

events = Table(
    "events", metadata,
    # AUTOINCREMENT on SQLite: ids are never reused after a prune, so since_id cursors hold.
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("ts", Double, nullable=False),
    Column("kind", String(64), nullable=False),
    Column("subject", String(256), nullable=False, index=True),
    Column("message", Text, nullable=False),
    Column("data", JSON),
    sqlite_autoincrement=True,
)


# --- rows → dataclasses -----------------------------------------------------------------------

def device_of(r: Any) -> Device:
    return Device(
        id=r.id, arch=r.arch, isa=frozenset(r.isa), runtimes=frozenset(r.runtimes), labels=dict(r.labels),
        online=bool(r.online), draining=bool(r.draining), last_seen=r.last_seen, memory_total=r.memory_total,
        memory_available=r.memory_available, memory_budget=r.memory_budget, disk_free=r.disk_free,
        cpu_percent=r.cpu_percent, temperature_c=r.temperature_c, cpu_count=r.cpu_count, cpu_model=r.cpu_model,
    )


def variant_of(r: Any) -> Variant:
    return Variant(
        model=r.model, version=r.version, target=r.target, arch=r.arch, isa=frozenset(r.isa), runtime=r.runtime,
        precision=r.precision, format=r.format, file=r.file, size_bytes=r.size_bytes,
        manifest_sha256=r.manifest_sha256, manifest_size=r.manifest_size,
    )


def variant_row(v: Variant) -> dict[str, Any]:
    return {
        "key": v.key, "model": v.model, "version": v.version, "target": v.target, "file": v.file, "arch": v.arch,
        "isa": sorted(v.isa), "runtime": v.runtime, "precision": v.precision, "format": v.format,
        "size_bytes": v.size_bytes, "manifest_sha256": v.manifest_sha256, "manifest_size": v.manifest_size,
    }


def deployment_of(r: Any) -> DeploymentSpec:
    return DeploymentSpec(
        name=r.name, model=r.model, version=r.version, replicas=r.replicas, selector=dict(r.selector),
        max_p95_ms=r.max_p95_ms, strategy=r.strategy, canary_percent=r.canary_percent,
        max_unavailable=r.max_unavailable, precisions=tuple(r.precisions),
    )


def deployment_row(s: DeploymentSpec) -> dict[str, Any]:
    return {
        "name": s.name, "model": s.model, "version": s.version, "replicas": s.replicas, "selector": dict(s.selector),
        "max_p95_ms": s.max_p95_ms, "strategy": s.strategy, "canary_percent": s.canary_percent,
        "max_unavailable": s.max_unavailable, "precisions": list(s.precisions),
    }


def placement_of(r: Any) -> Placement:
    """From a placements ⋈ variants row (the placement's own columns prefixed ``p_``)."""
    return Placement(deployment=r.p_deployment, device=r.p_device, variant=variant_of(r), state=r.p_state,
                     reason=r.p_reason, since=r.p_since)


def measured_of(r: Any) -> Measured:
    return Measured(device=r.device, variant_key=r.variant_key, p95_ms=r.p95_ms, memory_bytes=r.memory_bytes)


def rollout_of(r: Any) -> Rollout:
    return Rollout(
        id=r.id, deployment=r.deployment, from_version=r.from_version, to_version=r.to_version, state=r.state,
        canary_percent=r.canary_percent, max_unavailable=r.max_unavailable, failure_threshold=r.failure_threshold,
        started=r.started, updated=r.updated, reason=r.reason,
    )


def event_of(r: Any) -> Event:
    return Event(id=r.id, ts=r.ts, kind=r.kind, subject=r.subject, message=r.message, data=r.data)
