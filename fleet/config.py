"""The controller's configuration: ``fleet.toml`` read once into a frozen dataclass.

    broker_url = "mqtt://127.0.0.1:1883"
    store_url = "fleet.db"                # an SQLite file (WAL); or a SQLAlchemy URL
    artifact_dir = "artifacts"            # the content-addressed artifact store
    trusted_keys = ["keys/release.pub"]   # `fleet publish` accepts manifests signed by these
    http_host = "127.0.0.1"
    http_port = 8480                      # the JSON API and Prometheus /metrics; 0 = any free port
    heartbeat_timeout_s = 30              # no telemetry for this long → offline (the will is faster)
    reconcile_interval_s = 1.0
    controller_id = "ctl-1"

    [scheduler]
    memory_reserve_mb = 64
    max_cpu_percent = 90
    max_temperature_c = 80

    [overload]
    cpu_percent = 85      # above this ...
    window_s = 60         # ... for this long moves one replica away
    cooldown_s = 300      # and then not again from that device for this long

Relative paths are resolved against the config file's folder.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgectl.errors import UserError
from edgectl.tomlfile import config_path, read_toml
from fleet.scheduler import DEFAULTS, SchedulerConfig


class FleetConfigError(UserError):
    """fleet.toml is missing, not TOML, or has a bad field."""


@dataclass(frozen=True)
class OverloadConfig:
    cpu_percent: float = 85.0
    window_s: float = 60.0
    cooldown_s: float = 300.0


@dataclass(frozen=True)
class FleetConfig:
    store_url: str
    artifact_dir: Path
    broker_url: str = "mqtt://127.0.0.1:1883"
    trusted_keys: tuple[Path, ...] = ()
    http_host: str = "127.0.0.1"
    http_port: int = 8480
    heartbeat_timeout_s: float = 30.0
    reconcile_interval_s: float = 1.0
    controller_id: str = "ctl-1"
    scheduler: SchedulerConfig = DEFAULTS
    overload: OverloadConfig = field(default_factory=OverloadConfig)
    allow_unsigned: bool = False


_TOP = {"broker_url", "store_url", "artifact_dir", "trusted_keys", "http_host", "http_port", "heartbeat_timeout_s",
        "reconcile_interval_s", "controller_id", "scheduler", "overload", "allow_unsigned"}


def _path(base: Path, value: Any, key: str) -> Path:
    return config_path(base, value, key, "fleet config", FleetConfigError)


def _num(raw: dict[str, Any], key: str, default: float, *, minimum: float = 0.0) -> float:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
        raise FleetConfigError(f"fleet config: {key} must be a number ≥ {minimum}, got {value!r}")
    return float(value)


def parse_fleet_config(raw: dict[str, Any], base: Path) -> FleetConfig:
    unknown = sorted(set(raw) - _TOP)
    if unknown:
        allowed = ", ".join(sorted(_TOP))
        raise FleetConfigError(f"fleet config: unknown key(s) {', '.join(unknown)} (allowed: {allowed})")
    url = raw.get("broker_url", "mqtt://127.0.0.1:1883")
    if not isinstance(url, str) or not url.startswith(("mqtt://", "mqtts://")):
        raise FleetConfigError(f"fleet config: broker_url {url!r} must start with mqtt:// or mqtts://")
    store = raw.get("store_url", "fleet.db")
    if not isinstance(store, str) or not store:
        raise FleetConfigError("fleet config: store_url must be an SQLite path or a SQLAlchemy URL")
    store_url = store if "://" in store else str(_path(base, store, "store_url"))
    keys = raw.get("trusted_keys", [])
    if not isinstance(keys, list):
        raise FleetConfigError("fleet config: trusted_keys must be a list of public key paths")
    sched = raw.get("scheduler", {})
    over = raw.get("overload", {})
    if not isinstance(sched, dict) or not isinstance(over, dict):
        raise FleetConfigError("fleet config: [scheduler] and [overload] must be tables")
    known_sched = {"memory_reserve_mb", "disk_reserve_mb", "max_cpu_percent", "max_temperature_c", "sample_size",
                   "topology_label"}
    bad = sorted(set(sched) - known_sched)
    if bad:
        raise FleetConfigError(f"fleet config: unknown key(s) in [scheduler]: {', '.join(bad)}")
    changes: dict[str, Any] = {}
    if "memory_reserve_mb" in sched:
        changes["memory_reserve_bytes"] = int(_num(sched, "memory_reserve_mb", 64)) << 20
    if "disk_reserve_mb" in sched:
        changes["disk_reserve_bytes"] = int(_num(sched, "disk_reserve_mb", 256)) << 20
    for key in ("max_cpu_percent", "max_temperature_c"):
        if key in sched:
            changes[key] = _num(sched, key, 0)
    if "sample_size" in sched:
        changes["sample_size"] = int(_num(sched, "sample_size", 16))
    if "topology_label" in sched:
        changes["topology_label"] = str(sched["topology_label"])
    overload = OverloadConfig(
        cpu_percent=_num(over, "cpu_percent", 85.0), window_s=_num(over, "window_s", 60.0),
        cooldown_s=_num(over, "cooldown_s", 300.0),
    )
    trusted = tuple(_path(base, k, "trusted_keys[]") for k in keys)
    allow_unsigned = bool(raw.get("allow_unsigned", False))
    if not trusted and not allow_unsigned:
        raise FleetConfigError(
            "fleet config: trusted_keys is empty: list the public key(s) your compiles are signed with, "
            "or set allow_unsigned = true for local experiments"
        )
    return FleetConfig(
        store_url=store_url,
        artifact_dir=_path(base, raw.get("artifact_dir", "artifacts"), "artifact_dir"),
        broker_url=url,
        trusted_keys=trusted,
        http_host=str(raw.get("http_host", "127.0.0.1")),
        http_port=int(_num(raw, "http_port", 8480)),
        heartbeat_timeout_s=_num(raw, "heartbeat_timeout_s", 30.0, minimum=0.5),
        reconcile_interval_s=_num(raw, "reconcile_interval_s", 1.0, minimum=0.01),
        controller_id=str(raw.get("controller_id", "ctl-1")),
        scheduler=dataclasses.replace(DEFAULTS, **changes),
        overload=overload,
        allow_unsigned=allow_unsigned,
    )


def load_fleet_config(path: Path) -> FleetConfig:
    raw = read_toml(path, "fleet config", "fleet/config.py", FleetConfigError)
    return parse_fleet_config(raw, path.parent.resolve())
