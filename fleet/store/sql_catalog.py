"""Published models, deployments and placements (SQL).

A model version is the set of per-target manifests one ``edgectl fleet publish`` registered;
publishing the same manifests again is a lookup that returns the version they already have.
A placement is one row per (deployment, device): binding twice is a no-op, binding another
variant (a new version) replaces it and resets its state to ``pending``.

    v = store.register_model("digits", variants, {"x86_64-avx2": manifest})
    store.create_deployment(DeploymentSpec("digits", "digits", v, replicas=3))
    store.bind(Placement("digits", "pi-01", variant))
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import sqlalchemy as sa

from edgectl.wire import REPORT_STATES
from fleet.model import DeploymentSpec, Placement, Variant
from fleet.store import schema
from fleet.store.base import APPLIED, GONE, INVALID, STALE, Conflict, Invalid, ModelVersion, NotFound, ReportItem
from fleet.store.schema import (
    deployment_of,
    deployment_row,
    deployments,
    devices,
    models,
    placement_of,
    placements,
    variant_of,
    variant_row,
)
from fleet.store.sql_engine import SqlBase

PLACEMENT_STATES = ("pending", *REPORT_STATES)
_PUBLISH = "publish it with `edgectl fleet publish DIR`"


def _manifest_set(targets: Mapping[str, str]) -> str:
    return hashlib.sha256("\n".join(f"{t}={s}" for t, s in sorted(targets.items())).encode()).hexdigest()


def placement_select() -> sa.Select[Any]:
    """placements ⋈ variants, the placement's columns prefixed ``p_`` (see ``placement_of``)."""
    p = placements.c
    return (sa.select(schema.variants, p.deployment.label("p_deployment"), p.device.label("p_device"),
                      p.state.label("p_state"), p.reason.label("p_reason"), p.since.label("p_since"))
            .join_from(placements, schema.variants, p.variant_key == schema.variants.c.key)
            .order_by(p.deployment, p.device))


class CatalogOps(SqlBase):
    # --- models ----------------------------------------------------------------------------------
    def register_model(self, name: str, variants: Sequence[Variant], manifests: Mapping[str, Mapping[str, Any]],
                       version: int | None = None) -> int:
        """``variants`` carry any version (0 is fine): the assigned one replaces it."""
        if not variants:
            raise Invalid(f"model {name!r} has no variants to register: every one failed its gate? recompile")
        targets: dict[str, tuple[str, int]] = {}
        for v in variants:
            if targets.setdefault(v.target, (v.manifest_sha256, v.manifest_size)) != (v.manifest_sha256,
                                                                                     v.manifest_size):
                raise Invalid(f"model {name!r}: target {v.target} names two manifests: publish one folder per target")
        missing = sorted(set(targets) - set(manifests))
        if missing:
            raise Invalid(f"model {name!r}: no manifest given for target(s) {', '.join(missing)}")
        mset = _manifest_set({t: sha for t, (sha, _) in targets.items()})
        with self.tx(write=True) as conn:
            self.lock(conn, f"model:{name}")
            existing = conn.execute(sa.select(models.c.version)
                                    .where(models.c.name == name, models.c.manifest_set == mset)).scalar_one_or_none()
            if existing is not None:
                if version is not None and version != existing:
                    raise Conflict(f"these artifacts are already {name} version {existing}: deploy that version")
                return int(existing)
            top = conn.execute(sa.select(sa.func.max(models.c.version)).where(models.c.name == name)).scalar()
            if version is None:
                version = int(top or 0) + 1
            elif conn.execute(sa.select(models.c.version)
                              .where(models.c.name == name, models.c.version == version)).first() is not None:
                raise Conflict(f"{name} version {version} is already published with other artifacts: "
                               "publish without a version to get the next one")
            conn.execute(models.insert().values(name=name, version=version, manifest_set=mset,
                                                registered=time.time()))
            conn.execute(schema.manifests.insert(), [
                {"model": name, "version": version, "target": t, "sha256": sha, "size": size,
                 "body": dict(manifests[t])} for t, (sha, size) in sorted(targets.items())])
            conn.execute(schema.variants.insert(),
                         [variant_row(replace(v, model=name, version=version)) for v in variants])
            return version

    def list_models(self) -> list[ModelVersion]:
        with self.tx(write=False) as conn:
            shas: dict[tuple[str, int], dict[str, str]] = {}
            m = schema.manifests.c
            for r in conn.execute(sa.select(m.model, m.version, m.target, m.sha256)):
                shas.setdefault((r.model, r.version), {})[r.target] = r.sha256
            rows = conn.execute(sa.select(models).order_by(models.c.name, models.c.version)).all()
        return [ModelVersion(r.name, r.version, r.registered, shas.get((r.name, r.version), {})) for r in rows]

    def _require_version(self, conn: sa.Connection, model: str, version: int) -> None:
        if conn.execute(sa.select(models.c.version)
                        .where(models.c.name == model, models.c.version == version)).first() is None:
            known = conn.execute(sa.select(models.c.version).where(models.c.name == model)
                                 .order_by(models.c.version)).scalars().all()
            if not known:
                raise NotFound(f"model {model!r} is not published: {_PUBLISH}")
            raise NotFound(f"{model} version {version} is not published (known: {', '.join(map(str, known))}): "
                           f"{_PUBLISH}")

    def get_variants(self, model: str, version: int) -> list[Variant]:
        with self.tx(write=False) as conn:
            self._require_version(conn, model, version)
            v = schema.variants.c
            rows = conn.execute(sa.select(schema.variants).where(v.model == model, v.version == version)
                                .order_by(v.target, v.file))
            return [variant_of(r) for r in rows]

    def get_manifest(self, model: str, version: int, target: str) -> dict[str, Any]:
        with self.tx(write=False) as conn:
            self._require_version(conn, model, version)
            m = schema.manifests.c
            body = conn.execute(sa.select(m.body)
                                .where(m.model == model, m.version == version, m.target == target)).first()
        if body is None:
            raise NotFound(f"{model} version {version} has no artifacts for target {target}: compile for it")
        return dict(body[0])

    def latest_version(self, model: str) -> int:
        with self.tx(write=False) as conn:
            top = conn.execute(sa.select(sa.func.max(models.c.version)).where(models.c.name == model)).scalar()
        if top is None:
            raise NotFound(f"model {model!r} is not published: {_PUBLISH}")
        return int(top)

    # --- deployments -----------------------------------------------------------------------------
    def create_deployment(self, spec: DeploymentSpec) -> None:
        now = time.time()
        with self.tx(write=True) as conn:
            self._require_version(conn, spec.model, spec.version)
            if conn.execute(sa.select(deployments.c.name).where(deployments.c.name == spec.name)).first():
                raise Conflict(f"deployment {spec.name!r} already exists: update it, or delete it first")
            conn.execute(deployments.insert().values(created=now, updated=now, **deployment_row(spec)))

    def update_deployment(self, spec: DeploymentSpec) -> None:
        with self.tx(write=True) as conn:
            self._require_version(conn, spec.model, spec.version)
            done = conn.execute(deployments.update().where(deployments.c.name == spec.name)
                                .values(updated=time.time(), **deployment_row(spec)))
            if done.rowcount == 0:
                raise _no_deployment(spec.name)

    def delete_deployment(self, name: str) -> list[str]:
        with self.tx(write=True) as conn:
            devs = conn.execute(sa.select(placements.c.device).where(placements.c.deployment == name)
                                .order_by(placements.c.device)).scalars().all()
            if conn.execute(deployments.delete().where(deployments.c.name == name)).rowcount == 0:
                raise _no_deployment(name)
            return list(devs)  # placements and rollouts went with it (ON DELETE CASCADE)

    def get_deployment(self, name: str) -> DeploymentSpec:
        with self.tx(write=False) as conn:
            row = conn.execute(sa.select(deployments).where(deployments.c.name == name)).first()
        if row is None:
            raise _no_deployment(name)
        return deployment_of(row)

    def list_deployments(self) -> list[DeploymentSpec]:
        with self.tx(write=False) as conn:
            return [deployment_of(r) for r in conn.execute(sa.select(deployments).order_by(deployments.c.name))]

    # --- placements ------------------------------------------------------------------------------
    def bind(self, placement: Placement) -> bool:
        p, key = placements.c, placement.variant.key
        with self.tx(write=True) as conn:
            self.lock(conn, f"placement:{placement.deployment}/{placement.device}")
            current = conn.execute(sa.select(p.variant_key).where(
                p.deployment == placement.deployment, p.device == placement.device)).scalar_one_or_none()
            if current == key:
                return False
            if conn.execute(sa.select(deployments.c.name).where(deployments.c.name == placement.deployment)).first() \
                    is None:
                raise _no_deployment(placement.deployment)
            if conn.execute(sa.select(devices.c.id).where(devices.c.id == placement.device)).first() is None:
                raise NotFound(f"device {placement.device!r} is not registered: it cannot be bound")
            if conn.execute(sa.select(schema.variants.c.key).where(schema.variants.c.key == key)).first() is None:
                raise NotFound(f"variant {key!r} is not published: {_PUBLISH}")
            values = {"variant_key": key, "manifest_sha256": placement.variant.manifest_sha256,
                      "state": placement.state, "reason": placement.reason, "since": placement.since}
            if current is None:
                conn.execute(placements.insert().values(deployment=placement.deployment, device=placement.device,
                                                        **values))
            else:
                conn.execute(placements.update().where(p.deployment == placement.deployment,
                                                       p.device == placement.device).values(**values))
            return True

    def commit(self, binds: Sequence[Placement], unbinds: Sequence[Placement]) -> list[str]:
        """A scheduling pass's plan in one transaction: the devices whose desired state changed."""
        changed: set[str] = set()
        with self.atomic():
            for p in unbinds:
                if self.unbind(p.deployment, p.device):
                    changed.add(p.device)
            # In key order, so that two controllers' advisory locks (PostgreSQL) cannot deadlock.
            for p in sorted(binds, key=lambda b: (b.deployment, b.device)):
                if self.bind(p):
                    changed.add(p.device)
        return sorted(changed)

    def unbind(self, deployment: str, device: str) -> bool:
        with self.tx(write=True) as conn:
            stmt = placements.delete().where(placements.c.deployment == deployment, placements.c.device == device)
            return bool(conn.execute(stmt).rowcount)

    def set_placement_state(self, deployment: str, device: str, state: str, reason: str | None, ts: float,
                            manifest_sha256: str | None = None) -> bool:
        if state not in PLACEMENT_STATES:
            raise Invalid(f"placement state {state!r} is not one of {', '.join(PLACEMENT_STATES)}")
        p = placements.c
        with self.tx(write=True) as conn:
            bound = conn.execute(sa.select(p.manifest_sha256).where(
                p.deployment == deployment, p.device == device)).scalar_one_or_none()
            if bound is None:
                raise NotFound(f"deployment {deployment!r} is not placed on {device!r}: a late report? ignore it")
            if manifest_sha256 is not None and manifest_sha256 != bound:
                return False
            conn.execute(placements.update().where(p.deployment == deployment, p.device == device)
                         .values(state=state, reason=reason, since=ts))
            return True

    def record_reports(self, items: Sequence[ReportItem]) -> list[str]:
        outcomes = []
        with self.atomic():  # one transaction (and one fsync) for the batch
            for it in items:
                try:
                    ok = self.set_placement_state(it.deployment, it.device, it.state, it.reason, it.ts,
                                                  manifest_sha256=it.manifest_sha256)
                except NotFound:
                    outcomes.append(GONE)
                except Invalid:
                    outcomes.append(INVALID)
                else:
                    outcomes.append(APPLIED if ok else STALE)
        return outcomes

    def list_placements(self, deployment: str | None = None, device: str | None = None) -> list[Placement]:
        stmt = placement_select()
        if deployment is not None:
            stmt = stmt.where(placements.c.deployment == deployment)
        if device is not None:
            stmt = stmt.where(placements.c.device == device)
        with self.tx(write=False) as conn:
            return [placement_of(r) for r in conn.execute(stmt)]


def _no_deployment(name: str) -> NotFound:
    return NotFound(f"deployment {name!r} does not exist: `edgectl fleet deploy` creates it")
