"""ClusterView: the in-memory state the scheduler reads, and its cache of static feasibility.

The controller keeps one view alive and applies events to it (a device announced, telemetry,
a placement bound or reported, a measurement), rather than rebuilding it per pass: the static
index of each deployment survives telemetry and is patched, not rebuilt, when a device
announces new capabilities. Set ``view.now`` before a pass (it words "last seen N s ago").

    view = ClusterView(devices=store.devices(), variants=store.variants(), placements=store.placements(),
                       measured=store.measurements())
    view.upsert_device(dataclasses.replace(view.devices["pi-01"], cpu_percent=12.0))   # telemetry
    view.record(Measured("pi-01", variant.key, p95_ms=8.4, memory_bytes=41 << 20))

Device class. A device with no measurement of a variant borrows its class's: devices of the
same arch and CPU model (``aarch64/Cortex-A72``), or, when the CPU model was not announced,
of the same arch and ISA set. The class value is the median over the devices that reported it,
so one outlier does not move it.
"""

from __future__ import annotations

import statistics
import time
from collections import Counter, OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

from fleet.model import DeploymentSpec, Device, Measured, Placement, Rejection, Variant
from fleet.scheduler.config import SchedulerConfig
from fleet.scheduler.filters import disk_need, estimate_memory, static_check

# Placements in these states are visible in telemetry (serving) or hold nothing (failed); any
# other state is a replica on its way, whose memory and disk telemetry cannot show yet.
SETTLED_STATES = frozenset({"serving", "failed"})
MAX_INDEXES = 256  # distinct (model, version, selector, precisions) kept; LRU beyond
_NONE: Mapping[str, Measured] = {}


class Stat(NamedTuple):
    """A measured number and where it came from: this device, or the median of its class."""

    value: float
    source: str  # "measured" | "class"
    cls: str | None = None
    samples: int = 1  # devices the median is over


def device_class(device: Device) -> str:
    """``aarch64/Cortex-A72``; without a CPU model, ``aarch64/asimddp+asimdhp+neon``."""
    if device.cpu_model:
        return f"{device.arch}/{device.cpu_model}"
    return f"{device.arch}/{'+'.join(sorted(device.isa)) or '-'}"


def _static_fields(d: Device) -> tuple[object, ...]:
    return d.arch, d.isa, d.runtimes, tuple(sorted(d.labels.items())), d.cpu_model


IndexKey = tuple[str, int, tuple[tuple[str, str], ...], tuple[str, ...]]


def index_key(spec: DeploymentSpec) -> IndexKey:
    return spec.model, spec.version, tuple(sorted(spec.selector.items())), tuple(spec.precisions)


class StaticIndex:
    """Devices that pass the static filters of one deployment, each with its variant; the others
    with their reasons. ``ids`` is a list so the scheduler can walk it by position."""

    def __init__(self, spec: DeploymentSpec, variants: Sequence[Variant], devices: Iterable[Device]) -> None:
        self.spec = spec
        self.variants = tuple(variants)
        self.ids: list[str] = []
        self.variant: dict[str, Variant] = {}
        self.keys: dict[str, str] = {}  # Variant.key builds a string per call: keep it
        self.rejected: dict[str, list[Rejection]] = {}
        for device in devices:
            self.add(device)

    def add(self, device: Device) -> None:
        variant, reasons = static_check(device, self.variants, self.spec)
        if variant is None:
            self.rejected[device.id] = reasons
        else:
            self.ids.append(device.id)
            self.variant[device.id] = variant
            self.keys[device.id] = variant.key

    def discard(self, device_id: str) -> None:
        if self.variant.pop(device_id, None) is not None:
            self.ids.remove(device_id)  # O(n), but only when capabilities change
            del self.keys[device_id]
        else:
            self.rejected.pop(device_id, None)

    def counts(self) -> Counter[str]:
        """Statically rejected devices by their first failing filter."""
        return Counter(reasons[0].filter for reasons in self.rejected.values())


class ClusterView:
    """Devices, variants, placements and measurements, indexed the way the scheduler reads them."""

    def __init__(
        self,
        devices: Iterable[Device] = (),
        variants: Iterable[Variant] = (),
        placements: Iterable[Placement] = (),
        measured: Iterable[Measured] = (),
        now: float | None = None,
    ) -> None:
        self.now = time.time() if now is None else now
        self.devices: dict[str, Device] = {}
        self._variants: dict[tuple[str, int], tuple[Variant, ...]] = {}
        self._placements: dict[str, dict[str, Placement]] = {}  # deployment → device → placement
        self._on_device: dict[str, dict[str, Placement]] = {}  # device → deployment → placement
        self._measured: dict[str, dict[str, Measured]] = {}  # device → variant key → latest
        self._class_of: dict[str, str] = {}
        self._by_class: dict[tuple[str, str], dict[str, Measured]] = {}
        self._class_stats: dict[tuple[str, str], tuple[Stat | None, Stat | None]] = {}
        self._indexes: OrderedDict[IndexKey, StaticIndex] = OrderedDict()
        self._zones: dict[str, dict[str, Counter[str]]] = {}  # deployment → label → value → replicas
        for d in devices:
            self.upsert_device(d)
        grouped: dict[tuple[str, int], list[Variant]] = {}
        for v in variants:
            grouped.setdefault((v.model, v.version), []).append(v)
        for (model, version), vs in grouped.items():
            self.set_variants(model, version, vs)
        for p in placements:
            self.add_placement(p)
        for m in measured:
            self.record(m)

    # ------------------------------------------------------------------------------- devices

    def upsert_device(self, device: Device) -> None:
        old = self.devices.get(device.id)
        self.devices[device.id] = device
        if old is not None and _static_fields(old) == _static_fields(device):
            return  # telemetry only: the static indexes still hold
        self._zones.clear()  # labels may have changed; rare enough to recount everything
        cls = device_class(device)
        if self._class_of.get(device.id) != cls:
            self._move_class(device.id, cls)
        for index in self._indexes.values():
            index.discard(device.id)
            index.add(device)

    def remove_device(self, device_id: str) -> None:
        if self.devices.pop(device_id, None) is None:
            return
        self._move_class(device_id, None)
        self._zones.clear()
        for index in self._indexes.values():
            index.discard(device_id)

    # ------------------------------------------------------------------------------ variants

    def set_variants(self, model: str, version: int, variants: Iterable[Variant]) -> None:
        self._variants[(model, version)] = tuple(variants)
        for key in [k for k in self._indexes if k[:2] == (model, version)]:
            del self._indexes[key]

    def variants_of(self, model: str, version: int) -> tuple[Variant, ...]:
        return self._variants.get((model, version), ())

    def static_index(self, spec: DeploymentSpec) -> StaticIndex:
        """The cached static feasibility of ``spec``'s (model, version, selector, precisions)."""
        key = index_key(spec)
        index = self._indexes.get(key)
        if index is None:
            index = StaticIndex(spec, self.variants_of(spec.model, spec.version), self.devices.values())
            self._indexes[key] = index
            if len(self._indexes) > MAX_INDEXES:
                self._indexes.popitem(last=False)
        else:
            self._indexes.move_to_end(key)
        return index

    # ---------------------------------------------------------------------------- placements

    def add_placement(self, p: Placement) -> None:
        """Add or replace (same deployment and device) a placement, e.g. on a state report."""
        self._placements.setdefault(p.deployment, {})[p.device] = p
        self._on_device.setdefault(p.device, {})[p.deployment] = p
        self._zones.pop(p.deployment, None)

    def remove_placement(self, deployment: str, device_id: str) -> None:
        self._placements.get(deployment, {}).pop(device_id, None)
        self._on_device.get(device_id, {}).pop(deployment, None)
        self._zones.pop(deployment, None)

    def placements_of(self, deployment: str) -> Mapping[str, Placement]:
        return self._placements.get(deployment, {})

    def replica_zones(self, deployment: str, label: str) -> Mapping[str, int]:
        """How many of the deployment's replicas sit on each value of ``label`` (cached: the
        scheduler asks on every call, placements change far less often)."""
        by_label = self._zones.setdefault(deployment, {})
        counts = by_label.get(label)
        if counts is None:
            counts = Counter()
            for dev_id in self.placements_of(deployment):
                device = self.devices.get(dev_id)
                value = device.labels.get(label) if device is not None else None
                if value is not None:
                    counts[value] += 1
            by_label[label] = counts
        return counts

    def placements_on(self, device_id: str) -> Mapping[str, Placement]:
        return self._on_device.get(device_id, {})

    def _charges(self, device_id: str, config: SchedulerConfig, in_flight: bool) -> int:
        on = self._on_device.get(device_id)
        if not on:
            return 0
        device = self.devices[device_id]
        total = 0
        for p in on.values():
            if p.state == "failed" or (in_flight and p.state in SETTLED_STATES):
                continue
            total += estimate_memory(p.variant, device, self, config)[0]
        return total

    def in_flight_memory(self, device_id: str, config: SchedulerConfig) -> int:
        """Memory of the device's replicas that are bound but not serving yet."""
        return self._charges(device_id, config, in_flight=True)

    def model_memory(self, device_id: str, config: SchedulerConfig) -> int:
        """Memory of every replica on the device that is not failed (against its agent's budget)."""
        return self._charges(device_id, config, in_flight=False)

    def in_flight_disk(self, device_id: str) -> int:
        on = self._on_device.get(device_id)
        if not on:
            return 0
        return sum(disk_need(p.variant) for p in on.values() if p.state not in SETTLED_STATES)

    # -------------------------------------------------------------------------- measurements

    def record(self, m: Measured) -> None:
        """Keep the latest measurement of a variant on a device (replacing the previous one)."""
        self._measured.setdefault(m.device, {})[m.variant_key] = m
        cls = self._class_of.get(m.device)
        if cls is not None:
            self._by_class.setdefault((cls, m.variant_key), {})[m.device] = m
            self._class_stats.pop((cls, m.variant_key), None)

    def _move_class(self, device_id: str, cls: str | None) -> None:
        old = self._class_of.pop(device_id, None)
        if cls is not None:
            self._class_of[device_id] = cls
        for key, m in self._measured.get(device_id, {}).items():
            if old is not None:
                self._by_class.get((old, key), {}).pop(device_id, None)
                self._class_stats.pop((old, key), None)
            if cls is not None:
                self._by_class.setdefault((cls, key), {})[device_id] = m
                self._class_stats.pop((cls, key), None)

    def _class_stat(self, device_id: str, key: str) -> tuple[Stat | None, Stat | None]:
        cls = self._class_of.get(device_id)
        if cls is None:
            return None, None
        found = self._class_stats.get((cls, key))
        if found is None:
            members = self._by_class.get((cls, key), {}).values()
            p95s = [m.p95_ms for m in members if m.p95_ms is not None]
            mems = [m.memory_bytes for m in members if m.memory_bytes is not None]
            found = (
                Stat(statistics.median(p95s), "class", cls, len(p95s)) if p95s else None,
                Stat(statistics.median(mems), "class", cls, len(mems)) if mems else None,
            )
            self._class_stats[(cls, key)] = found
        return found

    def latency(self, device_id: str, key: str) -> Stat | None:
        """p95 of variant ``key`` on this device, else the median of its class, else None."""
        m = self._measured.get(device_id, _NONE).get(key)
        if m is not None and m.p95_ms is not None:
            return Stat(m.p95_ms, "measured")
        return self._class_stat(device_id, key)[0]

    def memory(self, device_id: str, key: str) -> Stat | None:
        """Memory of variant ``key`` on this device, else the median of its class, else None."""
        m = self._measured.get(device_id, _NONE).get(key)
        if m is not None and m.memory_bytes is not None:
            return Stat(m.memory_bytes, "measured")
        return self._class_stat(device_id, key)[1]
