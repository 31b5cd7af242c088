"""Devices, heartbeats, telemetry, measurements and desired-state generations (SQL).

Online/offline has two causes, kept apart because they recover differently: the last will
(``set_online(id, False)``: the broker saw the connection die; only the agent's next state
message brings it back) and missed heartbeats (``mark_stale``: the next telemetry or
``touch`` brings it back, reported as ``revived``). Telemetry older (by the agent's ``sent``
clock) than the newest applied, e.g. an agent flushing its offline buffer, does not overwrite
fresher numbers, but still counts as a heartbeat (``last_seen`` is the controller's clock).

    store.upsert_device(device, caps)                  # retained state message
    res = store.record_telemetry_batch(items)          # one transaction for a whole tick
    gen = store.bump_generation("pi-01", digest)       # same digest → same generation
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from functools import cached_property
from typing import Any

import sqlalchemy as sa

from fleet.model import Device, Measured
from fleet.store.base import Ingested, NotFound, TelemetryItem
from fleet.store.schema import device_of, devices, generations, measured, measured_of, placements, variants
from fleet.store.sql_engine import SqlBase

CHUNK = 500  # ids per IN (...) list: far below SQLite's 32766 and PostgreSQL's 65535 parameters


def _num(value: Any) -> float | None:
    """A number from the wire, or None (missing, null, bool, NaN, not a number)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _int(value: Any) -> int | None:
    n = _num(value)
    return None if n is None or n < 0 else int(n)


def _ids(name: str) -> Any:
    return sa.bindparam(name, expanding=True)


def _later(column: Any, ts: float) -> Any:
    return sa.case((column < ts, ts), else_=column)  # max(), portable (SQLite max / PG GREATEST)


def _alive() -> dict[str, Any]:
    """SET clauses for "heard from at :b_ts": last_seen moves on, a stale device comes back."""
    c = devices.c
    stale = c.offline_cause == "stale"
    return {"online": sa.case((stale, sa.true()), else_=c.online),
            "offline_cause": sa.case((stale, sa.null()), else_=c.offline_cause),
            "last_seen": sa.case((c.last_seen < sa.bindparam("b_ts"), sa.bindparam("b_ts")), else_=c.last_seen)}


def _unknown(device_id: str) -> NotFound:
    return NotFound(f"device {device_id!r} is not registered: it appears once its agent publishes its state")


class DeviceOps(SqlBase):
    # --- devices -------------------------------------------------------------------------------
    def upsert_device(self, device: Device, capabilities: Mapping[str, Any]) -> bool:
        ident = {
            "arch": device.arch, "isa": sorted(device.isa), "runtimes": sorted(device.runtimes),
            "labels": dict(device.labels), "capabilities": dict(capabilities), "memory_total": device.memory_total,
            "memory_budget": device.memory_budget, "cpu_count": device.cpu_count, "cpu_model": device.cpu_model,
        }
        with self.tx(write=True) as conn:
            found = conn.execute(sa.select(devices.c.id).where(devices.c.id == device.id)).first()
            if found is None:
                conn.execute(devices.insert().values(
                    id=device.id, online=device.online, offline_cause=None if device.online else "will",
                    draining=device.draining, last_seen=device.last_seen, telemetry_ts=0.0,
                    memory_available=device.memory_available, disk_free=device.disk_free,
                    cpu_percent=device.cpu_percent, temperature_c=device.temperature_c, **ident))
                return True
            conn.execute(devices.update().where(devices.c.id == device.id).values(
                online=device.online, offline_cause=None if device.online else "will",
                last_seen=_later(devices.c.last_seen, device.last_seen), **ident))
            return False

    def set_online(self, device_id: str, online: bool, ts: float) -> bool:
        with self.tx(write=True) as conn:
            was = conn.execute(sa.select(devices.c.online).where(devices.c.id == device_id)).scalar_one_or_none()
            if was is None:
                raise _unknown(device_id)
            values: dict[str, Any] = {"online": online, "offline_cause": None if online else "will"}
            if online:
                values["last_seen"] = _later(devices.c.last_seen, ts)
            conn.execute(devices.update().where(devices.c.id == device_id).values(**values))
            return bool(was) != online

    def touch(self, device_id: str, ts: float) -> bool:
        c = devices.c
        with self.tx(write=True) as conn:
            row = conn.execute(sa.select(c.online, c.offline_cause).where(c.id == device_id)).first()
            if row is None:
                raise _unknown(device_id)
            revive = not row.online and row.offline_cause == "stale"
            conn.execute(devices.update().where(c.id == device_id).values(
                last_seen=_later(c.last_seen, ts), **({"online": True, "offline_cause": None} if revive else {})))
            return revive

    def get_device(self, device_id: str) -> Device:
        with self.tx(write=False) as conn:
            row = conn.execute(sa.select(devices).where(devices.c.id == device_id)).first()
        if row is None:
            raise _unknown(device_id)
        return device_of(row)

    def get_capabilities(self, device_id: str) -> dict[str, Any]:
        with self.tx(write=False) as conn:
            caps = conn.execute(sa.select(devices.c.capabilities).where(devices.c.id == device_id)).first()
        if caps is None:
            raise _unknown(device_id)
        return dict(caps[0])

    def list_devices(self) -> list[Device]:
        with self.tx(write=False) as conn:
            return [device_of(r) for r in conn.execute(sa.select(devices).order_by(devices.c.id))]

    def set_draining(self, device_id: str, draining: bool) -> None:
        with self.tx(write=True) as conn:
            if conn.execute(devices.update().where(devices.c.id == device_id).values(draining=draining)).rowcount == 0:
                raise _unknown(device_id)

    def delete_device(self, device_id: str) -> None:
        """Forget a device with its placements and measurements (its generation is kept)."""
        with self.tx(write=True) as conn:
            if conn.execute(devices.delete().where(devices.c.id == device_id)).rowcount == 0:
                raise _unknown(device_id)

    def mark_stale(self, older_than: float) -> list[str]:
        stmt = (devices.update().where(devices.c.online.is_(True), devices.c.last_seen < older_than)
                .values(online=False, offline_cause="stale").returning(devices.c.id))
        with self.tx(write=True) as conn:
            return sorted(r.id for r in conn.execute(stmt))

    def hot_devices(self, cpu_above: float) -> dict[str, float]:
        c = devices.c
        with self.tx(write=False) as conn:
            return {r.id: float(r.cpu_percent) for r in conn.execute(
                sa.select(c.id, c.cpu_percent).where(c.online.is_(True), c.cpu_percent > cpu_above))}

    # --- telemetry -------------------------------------------------------------------------------
    def record_telemetry(self, device_id: str, resources: Mapping[str, Any],
                         models: Mapping[str, Mapping[str, Any]], ts: float, sent: float | None = None) -> bool:
        res = self.record_telemetry_batch([TelemetryItem(device_id, resources, models, ts, sent)])
        if res.unknown:
            raise _unknown(device_id)
        return bool(res.revived)

    def record_telemetry_batch(self, items: Sequence[TelemetryItem]) -> Ingested:
        newest: dict[str, TelemetryItem] = {}
        for item in items:  # a batch may hold several ticks of one device: the newest wins
            if item.device_id not in newest or item.order >= newest[item.device_id].order:
                newest[item.device_id] = item
        totals = Ingested(stale=len(items) - len(newest))
        batch = list(newest.values())
        with self.tx(write=True) as conn:
            for start in range(0, len(batch), CHUNK):
                part = self._ingest(conn, batch[start:start + CHUNK])
                totals = Ingested(totals.updated + part.updated, totals.revived + part.revived,
                                  totals.unknown + part.unknown, totals.stale + part.stale)
        return totals

    def _ingest(self, conn: sa.Connection, items: Sequence[TelemetryItem]) -> Ingested:
        ids = [it.device_id for it in items]
        known = {r.id: r for r in conn.execute(self._q_known, {"ids": ids})}
        heard = [it for it in items if it.device_id in known]
        fresh = [it for it in heard if it.order >= known[it.device_id].telemetry_ts]
        late = [it for it in heard if it.order < known[it.device_id].telemetry_ts]
        revived = tuple(it.device_id for it in heard
                        if not known[it.device_id].online and known[it.device_id].offline_cause == "stale")
        if fresh:
            self._update_resources(conn, fresh)
            self._store_measurements(conn, fresh)
        if late:  # old numbers, but the device is alive now: a heartbeat all the same
            conn.execute(self._u_alive, [{"b_id": it.device_id, "b_ts": it.ts} for it in late])
        return Ingested(len(fresh), revived, tuple(i for i in ids if i not in known), len(late))

    # The telemetry path's statements are built once: building and cache-keying them per call
    # cost more CPU than executing them.
    @cached_property
    def _q_known(self) -> Any:
        c = devices.c
        return sa.select(c.id, c.online, c.offline_cause, c.telemetry_ts).where(c.id.in_(_ids("ids")))

    @cached_property
    def _u_alive(self) -> Any:
        return devices.update().where(devices.c.id == sa.bindparam("b_id")).values(**_alive())

    @cached_property
    def _u_resources(self) -> Any:
        c = devices.c
        return devices.update().where(c.id == sa.bindparam("b_id")).values(
            **_alive(),
            telemetry_ts=sa.bindparam("b_order"),
            # A reading that is absent (e.g. a heartbeat) keeps the last one; a missing
            # temperature sensor is None on every message, so it is stored as reported.
            memory_available=sa.func.coalesce(sa.bindparam("b_mem", type_=sa.BigInteger), c.memory_available),
            disk_free=sa.func.coalesce(sa.bindparam("b_disk", type_=sa.BigInteger), c.disk_free),
            cpu_percent=sa.func.coalesce(sa.bindparam("b_cpu", type_=sa.Double), c.cpu_percent),
            temperature_c=sa.case(
                (sa.bindparam("b_has_temp", type_=sa.Boolean), sa.bindparam("b_temp", type_=sa.Double)),
                else_=c.temperature_c),
        )

    @cached_property
    def _q_bound(self) -> Any:
        p = placements.c
        return sa.select(p.device, p.deployment, p.variant_key, p.manifest_sha256).where(p.device.in_(_ids("ids")))

    @cached_property
    def _q_by_file(self) -> Any:
        v = variants.c
        return sa.select(v.key, v.manifest_sha256, v.file).where(v.manifest_sha256.in_(_ids("shas")))

    @cached_property
    def _i_measured(self) -> Any:
        stmt = self.insert(measured)
        # No requests in the window → no p95: keep the last one rather than forget it.
        return stmt.on_conflict_do_update(
            index_elements=[measured.c.device, measured.c.variant_key],
            set_={"p95_ms": sa.func.coalesce(stmt.excluded.p95_ms, measured.c.p95_ms),
                  "memory_bytes": sa.func.coalesce(stmt.excluded.memory_bytes, measured.c.memory_bytes),
                  "ts": stmt.excluded.ts})

    def _update_resources(self, conn: sa.Connection, items: Sequence[TelemetryItem]) -> None:
        conn.execute(self._u_resources, [{
            "b_id": it.device_id, "b_ts": it.ts, "b_order": it.order,
            "b_mem": _int(it.resources.get("memory_available_bytes")),
            "b_disk": _int(it.resources.get("disk_free_bytes")),
            "b_cpu": _num(it.resources.get("cpu_percent")),
            "b_has_temp": "temperature_c" in it.resources, "b_temp": _num(it.resources.get("temperature_c")),
        } for it in items])

    def _store_measurements(self, conn: sa.Connection, items: Sequence[TelemetryItem]) -> None:
        with_models = [it for it in items if it.models]
        if not with_models:
            return
        # Which variant a model entry measures: the file it names, else the device's placement
        # of that deployment when it runs the same manifest; an entry matching neither (e.g. a
        # version the agent rolled back to and no longer placed) is dropped, not guessed.
        bound = {(r.device, r.deployment): r
                 for r in conn.execute(self._q_bound, {"ids": [it.device_id for it in with_models]})}
        shas = {str(m.get("manifest_sha256")) for it in with_models for m in it.models.values()
                if isinstance(m, Mapping) and m.get("variant")}
        by_file = {(r.manifest_sha256, r.file): r.key
                   for r in conn.execute(self._q_by_file, {"shas": sorted(shas)})} if shas else {}
        rows = []
        for it in with_models:
            for name, m in it.models.items():
                if not isinstance(m, Mapping):
                    continue
                sha = m.get("manifest_sha256")
                key = by_file.get((sha, m.get("variant")))
                place = bound.get((it.device_id, name))
                if key is None and place is not None and place.manifest_sha256 == sha:
                    key = place.variant_key
                p95, mem = _num(m.get("p95_ms")), _int(m.get("memory_bytes"))
                if key is not None and (p95 is not None or mem is not None):
                    rows.append({"device": it.device_id, "variant_key": key, "p95_ms": p95, "memory_bytes": mem,
                                 "ts": it.ts})
        if rows:
            conn.execute(self._i_measured, rows)

    # --- measurements ----------------------------------------------------------------------------
    def record_measured(self, m: Measured, ts: float) -> None:
        with self.tx(write=True) as conn:
            if conn.execute(sa.select(devices.c.id).where(devices.c.id == m.device)).first() is None:
                raise _unknown(m.device)
            if conn.execute(sa.select(variants.c.key).where(variants.c.key == m.variant_key)).first() is None:
                raise NotFound(f"variant {m.variant_key!r} is not published: publish its model first")
            conn.execute(self._i_measured, [{"device": m.device, "variant_key": m.variant_key, "p95_ms": m.p95_ms,
                                             "memory_bytes": m.memory_bytes, "ts": ts}])

    def measured(self, device: str | None = None) -> list[Measured]:
        stmt = sa.select(measured).order_by(measured.c.device, measured.c.variant_key)
        if device is not None:
            stmt = stmt.where(measured.c.device == device)
        with self.tx(write=False) as conn:
            return [measured_of(r) for r in conn.execute(stmt)]

    # --- generations -----------------------------------------------------------------------------
    def bump_generation(self, device_id: str, digest: str | None = None) -> int:
        stmt = self.insert(generations).values(device=device_id, generation=1, digest=digest)
        g = generations.c
        # One statement, so two controllers bumping at once get two different numbers.
        same = sa.and_(stmt.excluded.digest.is_not(None), g.digest == stmt.excluded.digest)
        stmt = stmt.on_conflict_do_update(
            index_elements=[g.device],
            set_={"generation": sa.case((same, g.generation), else_=g.generation + 1), "digest": stmt.excluded.digest},
        ).returning(g.generation)
        with self.tx(write=True) as conn:
            return int(conn.execute(stmt).scalar_one())

    def generation(self, device_id: str) -> int:
        """The device's current generation; 0 when none was ever given."""
        with self.tx(write=False) as conn:
            found = conn.execute(sa.select(generations.c.generation).where(generations.c.device == device_id)).first()
        return int(found[0]) if found else 0
