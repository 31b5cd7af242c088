"""Resource samples (CPU, load, memory, RSS, disk, temperature) and the telemetry message.

A temperature is reported only when the hardware has a sensor: psutil's cpu-ish chips first,
then ``/sys/class/thermal/thermal_zone*/temp``, else ``None`` (never a made-up number — the
scheduler's thermal-headroom filter treats ``None`` as "unknown", not as "cool").

    sampler = ResourceSampler(Path("/var/lib/edgectl-agent"))
    ...                                   # every telemetry interval:
    payload = telemetry_message("pi-01", sampler.sample(), {"digits": metrics.snapshot()},
                                dropped=buffer.dropped, ts=time.time())
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import psutil

from edgectl.wire import encode

# Readings outside this range are a sensor that is absent or broken (0, -273.2, 255 ...).
_PLAUSIBLE_C = (-40.0, 150.0)
# Sensor (chip or thermal zone type) names that measure the CPU/SoC, best first. Names are
# compared lowercased with '-' read as '_' (Jetson says "cpu-thermal", a Pi 5 "cpu_thermal").
_CPU_SENSORS = (
    re.compile(r"^(coretemp|k10temp|zenpower|x86_pkg_temp)$"),
    re.compile(r"cpu"),
    re.compile(r"^(soc\d*_thermal|tj_thermal|thermal_zone\d*)$"),
    # ACPI's zone is a board sensor near the CPU on most x86 boxes: better than nothing.
    re.compile(r"^acpitz$"),
)
# Within a multi-sensor chip, the package/die reading is the one that throttles.
_PREFERRED_LABELS = re.compile(r"^(package id \d+|tdie|tctl)$", re.IGNORECASE)

Sensors = Mapping[str, Iterable[Any]]  # psutil.sensors_temperatures(): name → [shwtemp(label, current, ...)]


def _psutil_sensors() -> Sensors:
    reader = getattr(psutil, "sensors_temperatures", None)  # Linux/FreeBSD only
    if reader is None:
        return {}
    try:
        return reader() or {}
    except (OSError, RuntimeError, ValueError):
        return {}


def _rank(name: str) -> int | None:
    key = name.lower().replace("-", "_")
    return next((i for i, pattern in enumerate(_CPU_SENSORS) if pattern.search(key)), None)


def _plausible(value: float) -> bool:
    return _PLAUSIBLE_C[0] < value < _PLAUSIBLE_C[1]


def _best(candidates: list[tuple[int, str, float]]) -> float | None:
    """The reading of the best-ranked sensor: its package label if any, else its hottest one."""
    if not candidates:
        return None
    top = min(rank for rank, _, _ in candidates)
    readings = [(label, value) for rank, label, value in candidates if rank == top]
    preferred = [value for label, value in readings if _PREFERRED_LABELS.match(label)]
    return round(preferred[0] if preferred else max(value for _, value in readings), 1)


def _from_psutil(sensors: Sensors) -> float | None:
    candidates: list[tuple[int, str, float]] = []
    for name, entries in sensors.items():
        rank = _rank(name)
        if rank is None:
            continue  # nvme, wifi, battery, gpu: not what throttles the models
        for entry in entries:
            current = getattr(entry, "current", None)
            if isinstance(current, (int, float)) and _plausible(current):
                candidates.append((rank, str(getattr(entry, "label", "") or ""), float(current)))
    return _best(candidates)


def _from_sysfs(thermal_root: Path) -> float | None:
    candidates: list[tuple[int, str, float]] = []
    for zone in sorted(thermal_root.glob("thermal_zone*")):
        try:
            kind = (zone / "type").read_text().strip()
            celsius = int((zone / "temp").read_text().strip()) / 1000.0  # millidegrees
        except (OSError, ValueError):
            continue  # a zone whose driver is asleep answers EAGAIN/ENODATA
        rank = _rank(kind)
        if rank is not None and _plausible(celsius):
            candidates.append((rank, "", celsius))
    return _best(candidates)


class ResourceSampler:
    """Samples this device's resources; cheap enough to call every few seconds.

    CPU percent is the busy share since the previous ``sample()`` (the first one covers the
    time since construction). It is computed here from ``psutil.cpu_times()`` rather than with
    ``psutil.cpu_percent(interval=None)``, whose "previous call" is kept per calling thread:
    priming it at construction from the main thread would not prime a telemetry thread.

    >>> sampler = ResourceSampler(Path("/var/lib/edgectl-agent"))
    >>> sampler.sample()["temperature_c"]      # None where the hardware has no sensor
    47.2
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        thermal_root: Path = Path("/sys/class/thermal"),
        read_sensors: Callable[[], Sensors] = _psutil_sensors,
    ) -> None:
        self.data_dir = data_dir
        self._thermal_root = thermal_root
        self._read_sensors = read_sensors
        self._process = psutil.Process()
        self._last_cpu = psutil.cpu_times()

    def cpu_percent(self) -> float:
        now = psutil.cpu_times()
        # Same arithmetic as psutil's: guest time is already inside user/nice, iowait is idle.
        deltas = {f: max(0.0, getattr(now, f) - getattr(self._last_cpu, f)) for f in now._fields}
        self._last_cpu = now
        total = sum(deltas.values()) - deltas.get("guest", 0.0) - deltas.get("guest_nice", 0.0)
        busy = total - deltas.get("idle", 0.0) - deltas.get("iowait", 0.0)
        return round(100.0 * busy / total, 1) if total > 0 else 0.0

    def temperature_c(self) -> float | None:
        found = _from_psutil(self._read_sensors())
        return found if found is not None else _from_sysfs(self._thermal_root)

    def sample(self) -> dict[str, Any]:
        memory = psutil.virtual_memory()
        disk_free: int | None = None
        disk_total: int | None = None
        try:
            disk = shutil.disk_usage(self.data_dir)
            disk_free, disk_total = disk.free, disk.total
        except OSError:
            pass  # data dir on an unmounted volume: report None, don't guess
        load = os.getloadavg() if hasattr(os, "getloadavg") else None
        return {
            "cpu_percent": self.cpu_percent(),
            "load": [round(x, 2) for x in load] if load else None,
            "memory_total_bytes": memory.total,
            "memory_available_bytes": memory.available,
            "memory_percent": memory.percent,
            "rss_bytes": self._process.memory_info().rss,
            "disk_free_bytes": disk_free,
            "disk_total_bytes": disk_total,
            "temperature_c": self.temperature_c(),
        }


def _metrics_dict(snapshot: Any) -> dict[str, Any]:
    raw = snapshot.to_dict() if hasattr(snapshot, "to_dict") else dict(snapshot)
    # Latencies come from seconds × 1e3 (2.0999999999999996 ms); µs precision is plenty and
    # keeps each message, and the offline buffer, smaller.
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in raw.items()}


def telemetry_message(
    device_id: str,
    resources: dict[str, Any],
    models: Mapping[str, Any],
    *,
    dropped: int,
    ts: float,
) -> bytes:
    """The ``telemetry`` message: resources, per-model metrics (``MetricsSnapshot`` or its
    ``to_dict()``), and how many earlier messages the offline buffer had to drop."""
    return encode(
        "telemetry",
        {
            "device": device_id,
            "ts": round(ts, 3),
            "resources": resources,
            "models": {name: _metrics_dict(snap) for name, snap in models.items()},
            "dropped": dropped,
        },
    )
