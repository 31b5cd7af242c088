"""Fleet operations shared by the CLI and the controller: publish, deploy, undeploy, status, explain.

They work on the store (the one source of truth): the controller's reconcile loop picks up
what they write on its next pass, so ``edgectl fleet deploy`` works whether or not a controller
is running right now, and two controllers never disagree::

    store = open_store(cfg.store_url)
    mv = publish_dir(store, ArtifactStore(cfg.artifact_dir), Path("build/digits"), keys)
    deploy(store, DeploymentSpec("digits", "digits", mv.version, replicas=2))
    status(store)["deployments"][0]["running"]
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edgectl.errors import VerificationError
from edgectl.manifest import MANIFEST_NAME, read_manifest, verify_dir
from fleet.artifacts import ArtifactStore
from fleet.model import DeploymentSpec
from fleet.scheduler import ClusterView, explain
from fleet.scheduler.core import Verdict
from fleet.store import NotFound, Store
from fleet.store.base import Invalid, ModelVersion, variants_from_manifest

HEALTHY = "serving"
FAILED = ("failed", "rolled_back", "rejected")


def _target_folders(folder: Path) -> list[Path]:
    if (folder / MANIFEST_NAME).is_file():
        return [folder]
    found = sorted(p for p in folder.iterdir() if (p / MANIFEST_NAME).is_file()) if folder.is_dir() else []
    if not found:
        raise VerificationError(f"{folder} holds no manifest.json: pass the --out folder of `edgectl compile`")
    return found


def _verify(folder: Path, trusted: dict[str, Ed25519PublicKey], allow_unsigned: bool) -> dict[str, Any]:
    manifest = read_manifest(folder)
    sig = manifest.get("signature")
    key_id = sig.get("key_id") if isinstance(sig, dict) else None
    if key_id in trusted:
        return verify_dir(folder, trusted[str(key_id)])
    if allow_unsigned:
        return verify_dir(folder)
    who = f"key {key_id}" if key_id else "no key"
    raise VerificationError(
        f"{folder / MANIFEST_NAME} is signed by {who}, which this fleet does not trust: add its public key to "
        "trusted_keys in fleet.toml, or compile with --sign-key"
    )


def publish_dir(store: Store, artifacts: ArtifactStore, folder: Path, trusted: dict[str, Ed25519PublicKey], *,
                allow_unsigned: bool = False) -> ModelVersion:
    """Verify every target folder of a compile output, store its files, register a model version.

    Publishing the same output twice returns the version it already has."""
    folders = _target_folders(folder)
    manifests = {f.name: _verify(f, trusted, allow_unsigned) for f in folders}
    names = {str(m["model"]["name"]) for m in manifests.values()}
    if len(names) != 1:
        raise VerificationError(f"{folder} mixes models {', '.join(sorted(names))}: publish one model at a time")
    name = names.pop()
    variants = []
    by_target: dict[str, dict[str, Any]] = {}
    for f in folders:
        ref = artifacts.put_dir(f)
        manifest = manifests[f.name]
        by_target[str(manifest["target"]["name"])] = manifest
        variants += variants_from_manifest(name, manifest, ref.manifest_sha256, ref.manifest_size)
    if not variants:
        raise VerificationError(f"{folder} has no written variant: every variant failed its gate at compile time")
    known = {(m.name, m.version) for m in store.list_models()}
    version = store.register_model(name, variants, by_target)
    if (name, version) in known:
        return next(m for m in store.list_models() if m.name == name and m.version == version)
    store.append_event("published", name, f"{name} v{version}: {len(variants)} variants for "
                       f"{', '.join(sorted(by_target))}", time.time())
    return next(m for m in store.list_models() if m.name == name and m.version == version)


def deploy(store: Store, spec: DeploymentSpec, *, failure_threshold: float = 0.2) -> str:
    """Create the deployment, change it, or roll it out to a newer version. Returns what happened."""
    version = spec.version or store.latest_version(spec.model)
    if not store.get_variants(spec.model, version):
        raise NotFound(f"model {spec.model} v{version} is not published: run `edgectl fleet publish DIR` first")
    if spec.strategy not in ("binpack", "spread"):
        raise Invalid(f"strategy {spec.strategy!r} must be binpack or spread")
    spec = dataclasses.replace(spec, version=version)
    now = time.time()
    try:
        old = store.get_deployment(spec.name)
    except NotFound:
        store.create_deployment(spec)
        store.append_event("deployed", spec.name, f"{spec.model} v{version}, {_replicas(spec)}", now)
        return f"created {spec.name}: {spec.model} v{version}, {_replicas(spec)}"
    with store.atomic():
        store.update_deployment(spec)
        if old.version != version:
            active = store.active_rollout(spec.name)
            if active is not None:
                store.update_rollout(active.id, ts=now, state="done", reason=f"superseded by v{version}")
            store.create_rollout(spec.name, version, from_version=old.version, canary_percent=spec.canary_percent,
                                 max_unavailable=spec.max_unavailable, failure_threshold=failure_threshold, ts=now)
            store.append_event("rollout", spec.name, f"v{old.version} → v{version} (canary {spec.canary_percent:g} %, "
                               f"max unavailable {spec.max_unavailable})", now)
            return f"rolling out {spec.name}: v{old.version} → v{version}"
    store.append_event("updated", spec.name, f"{_replicas(spec)}", now)
    return f"updated {spec.name}: {_replicas(spec)}"


def _replicas(spec: DeploymentSpec) -> str:
    return "every matching device" if spec.replicas is None else f"{spec.replicas} replica(s)"


def undeploy(store: Store, name: str) -> list[str]:
    devices = store.delete_deployment(name)
    store.append_event("undeployed", name, f"removed from {len(devices)} device(s)", time.time())
    return devices


def status(store: Store) -> dict[str, Any]:
    """Devices and deployments as `edgectl fleet status` shows them (JSON-ready)."""
    snap = store.snapshot()
    by_device: dict[str, list[dict[str, Any]]] = {}
    by_dep: dict[str, list[Any]] = {}
    for p in snap.placements:
        by_device.setdefault(p.device, []).append({"deployment": p.deployment, "version": p.variant.version,
                                                   "variant": p.variant.file, "state": p.state, "reason": p.reason})
        by_dep.setdefault(p.deployment, []).append(p)
    devices = []
    for d in sorted(snap.devices.values(), key=lambda d: d.id):
        used = 1 - d.memory_available / d.memory_total if d.memory_total and d.memory_available else None
        devices.append({
            "id": d.id, "arch": d.arch, "online": d.online, "draining": d.draining, "cpu_percent": d.cpu_percent,
            "memory_used_percent": None if used is None else round(100 * used, 1),
            "memory_total_bytes": d.memory_total, "temperature_c": d.temperature_c, "last_seen": d.last_seen,
            "labels": dict(d.labels), "models": by_device.get(d.id, []),
        })
    rollouts = {r.deployment: r for r in snap.rollouts}
    deployments = []
    for spec in sorted(snap.deployments.values(), key=lambda s: s.name):
        ps = by_dep.get(spec.name, [])
        online = [p for p in ps if p.device in snap.devices and snap.devices[p.device].online]
        r = rollouts.get(spec.name)
        deployments.append({
            "name": spec.name, "model": spec.model, "version": spec.version,
            "desired": spec.replicas if spec.replicas is not None else "all",
            "placed": len(ps),
            "running": sum(p.state == HEALTHY for p in online),
            "failed": sum(p.state in FAILED for p in ps),
            "pending": sum(p.state not in (HEALTHY, *FAILED) for p in ps),
            "strategy": spec.strategy, "selector": dict(spec.selector),
            "rollout": None if r is None else {"from": r.from_version, "to": r.to_version, "state": r.state},
        })
    return {"devices": devices, "deployments": deployments, "ts": time.time()}


def explain_deployment(store: Store, name: str, device: str | None = None,
                       config: Any = None) -> tuple[DeploymentSpec, list[Verdict]]:
    """Why each device does or does not (or would not) get a replica of ``name``."""
    from fleet.scheduler import DEFAULTS

    spec = store.get_deployment(name)
    snap = store.snapshot()
    view = ClusterView(snap.devices.values(), [v for vs in snap.variants.values() for v in vs],
                       [p for p in snap.placements if p.deployment != name], snap.measured)
    return spec, explain(view, spec, device, config or DEFAULTS)
