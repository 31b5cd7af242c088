"""Rollouts, the event log and the scheduler's snapshot (SQL).

At most one rollout per deployment is running or paused: a unique partial index says so,
so two controllers cannot both start one. Rollouts end ``done`` or ``rolled_back`` and stay
as history. Events are append-only with ids that are never reused (``since_id`` cursors stay
valid after a prune); the log is pruned to ``StoreSettings.keep_events`` as it grows.

    r = store.create_rollout("digits", 4, from_version=3, canary_percent=10, max_unavailable=1,
                             failure_threshold=0.2, ts=now)
    store.update_rollout(r.id, state="rolled_back", reason="3 of 10 canaries failed", ts=now)
    store.append_event("rollout.rolled_back", "digits", "3 of 10 canaries failed", ts=now)
    snap = store.snapshot()
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa

from fleet.store.base import (
    ACTIVE_ROLLOUT_STATES,
    ROLLOUT_STATES,
    Conflict,
    Event,
    Invalid,
    NotFound,
    Rollout,
    Snapshot,
)
from fleet.store.schema import (
    deployment_of,
    deployments,
    device_of,
    devices,
    event_of,
    events,
    generations,
    measured,
    measured_of,
    models,
    placement_of,
    rollout_of,
    rollouts,
    variant_of,
    variants,
)
from fleet.store.sql_catalog import placement_select
from fleet.store.sql_engine import SqlBase

PRUNE_EVERY = 1000  # event ids: prune when an id is a multiple of this (no process-local counter)


class LogOps(SqlBase):
    # --- rollouts --------------------------------------------------------------------------------
    def create_rollout(self, deployment: str, to_version: int, *, from_version: int | None, canary_percent: float,
                       max_unavailable: int, failure_threshold: float, ts: float) -> Rollout:
        with self.tx(write=True) as conn:
            model = conn.execute(sa.select(deployments.c.model).where(deployments.c.name == deployment)).scalar()
            if model is None:
                raise NotFound(f"deployment {deployment!r} does not exist: deploy it before rolling it out")
            if conn.execute(sa.select(models.c.version)
                            .where(models.c.name == model, models.c.version == to_version)).first() is None:
                raise NotFound(f"{model} version {to_version} is not published: publish it, then roll it out")
            active = self._active(conn, deployment)
            if active is not None:
                raise Conflict(f"deployment {deployment!r} already has rollout {active.id} to version "
                               f"{active.to_version} ({active.state}): finish or roll it back first")
            new_id = conn.execute(rollouts.insert().values(
                deployment=deployment, from_version=from_version, to_version=to_version, state="running",
                canary_percent=canary_percent, max_unavailable=max_unavailable, failure_threshold=failure_threshold,
                started=ts, updated=ts, reason=None).returning(rollouts.c.id)).scalar_one()
            return self._rollout(conn, int(new_id))

    def _rollout(self, conn: sa.Connection, rollout_id: int) -> Rollout:
        row = conn.execute(sa.select(rollouts).where(rollouts.c.id == rollout_id)).first()
        if row is None:
            raise NotFound(f"rollout {rollout_id} does not exist: `edgectl fleet rollouts` lists them")
        return rollout_of(row)

    def _active(self, conn: sa.Connection, deployment: str) -> Rollout | None:
        row = conn.execute(sa.select(rollouts).where(rollouts.c.deployment == deployment,
                                                     rollouts.c.state.in_(ACTIVE_ROLLOUT_STATES))).first()
        return rollout_of(row) if row else None

    def get_rollout(self, rollout_id: int) -> Rollout:
        with self.tx(write=False) as conn:
            return self._rollout(conn, rollout_id)

    def active_rollout(self, deployment: str) -> Rollout | None:
        with self.tx(write=False) as conn:
            return self._active(conn, deployment)

    def update_rollout(self, rollout_id: int, *, ts: float, state: str | None = None,
                       canary_percent: float | None = None, reason: str | None = None) -> Rollout:
        if state is not None and state not in ROLLOUT_STATES:
            raise Invalid(f"rollout state {state!r} is not one of {', '.join(ROLLOUT_STATES)}")
        with self.tx(write=True) as conn:
            current = self._rollout(conn, rollout_id)
            if current.state not in ACTIVE_ROLLOUT_STATES:
                raise Conflict(f"rollout {rollout_id} of {current.deployment!r} is already {current.state}: "
                               "start a new rollout")
            values: dict[str, Any] = {"updated": ts}
            if state is not None:
                values["state"] = state
            if canary_percent is not None:
                values["canary_percent"] = canary_percent
            if reason is not None:
                values["reason"] = reason
            # The state guard in the WHERE makes a concurrent finish by another controller lose cleanly.
            done = conn.execute(rollouts.update().where(rollouts.c.id == rollout_id,
                                                        rollouts.c.state.in_(ACTIVE_ROLLOUT_STATES)).values(**values))
            if done.rowcount == 0:
                raise Conflict(f"rollout {rollout_id} changed meanwhile: read it again")
            return self._rollout(conn, rollout_id)

    def list_rollouts(self, deployment: str | None = None) -> list[Rollout]:
        stmt = sa.select(rollouts).order_by(rollouts.c.id)
        if deployment is not None:
            stmt = stmt.where(rollouts.c.deployment == deployment)
        with self.tx(write=False) as conn:
            return [rollout_of(r) for r in conn.execute(stmt)]

    # --- events ----------------------------------------------------------------------------------
    def append_event(self, kind: str, subject: str, message: str, ts: float,
                     data: Mapping[str, Any] | None = None) -> int:
        with self.tx(write=True) as conn:
            new_id = int(conn.execute(events.insert().values(
                ts=ts, kind=kind, subject=subject, message=message, data=dict(data) if data is not None else None)
                .returning(events.c.id)).scalar_one())
            if new_id % PRUNE_EVERY == 0:
                self._prune(conn, self.settings.keep_events)
            return new_id

    def last_event_id(self) -> int:
        with self.tx(write=False) as conn:
            return int(conn.execute(sa.select(sa.func.max(events.c.id))).scalar() or 0)

    def list_events(self, since_id: int = 0, limit: int = 100, subject: str | None = None) -> list[Event]:
        stmt = sa.select(events).where(events.c.id > since_id).order_by(events.c.id).limit(limit)
        if subject is not None:
            stmt = stmt.where(events.c.subject == subject)
        with self.tx(write=False) as conn:
            return [event_of(r) for r in conn.execute(stmt)]

    def prune_events(self, keep: int) -> int:
        """Delete all but the newest ``keep`` events; how many went."""
        with self.tx(write=True) as conn:
            return self._prune(conn, keep)

    def _prune(self, conn: sa.Connection, keep: int) -> int:
        cutoff = conn.execute(sa.select(events.c.id).order_by(events.c.id.desc()).offset(max(keep, 0)).limit(1)) \
            .scalar()
        if cutoff is None:
            return 0
        return int(conn.execute(events.delete().where(events.c.id <= cutoff)).rowcount)

    # --- snapshot --------------------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        with self.tx(write=False) as conn:
            # Not the capabilities document: the scheduler never reads it, and it is the largest JSON to decode.
            cols = [c for c in devices.c if c.name != "capabilities"]
            devs = {r.id: device_of(r) for r in conn.execute(sa.select(*cols).order_by(devices.c.id))}
            deps = {r.name: deployment_of(r) for r in conn.execute(sa.select(deployments).order_by(deployments.c.name))}
            active = [rollout_of(r) for r in conn.execute(
                sa.select(rollouts).where(rollouts.c.state.in_(ACTIVE_ROLLOUT_STATES)).order_by(rollouts.c.id))]
            wanted = {(d.model, d.version) for d in deps.values()}
            for r in active:
                model = deps[r.deployment].model
                wanted |= {(model, r.to_version)} | ({(model, r.from_version)} if r.from_version is not None else set())
            found: dict[tuple[str, int], list[Any]] = {w: [] for w in wanted}
            if wanted:
                pairs = sa.tuple_(variants.c.model, variants.c.version).in_(sorted(wanted))
                for row in conn.execute(sa.select(variants).where(pairs).order_by(variants.c.target, variants.c.file)):
                    found[(row.model, row.version)].append(variant_of(row))
            places = tuple(placement_of(r) for r in conn.execute(placement_select()))
            meas = tuple(measured_of(r) for r in conn.execute(
                sa.select(measured).order_by(measured.c.device, measured.c.variant_key)))
            gens = {r.device: int(r.generation) for r in conn.execute(sa.select(generations))}
        return Snapshot(devices=devs, deployments=deps, variants={k: tuple(v) for k, v in found.items()},
                        placements=places, measured=meas, rollouts=tuple(active), generations=gens)
