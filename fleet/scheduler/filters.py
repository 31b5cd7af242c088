"""Filters: may this device take a replica of this deployment, and if not, why not.

Two kinds, because they change at different speeds:

* static (:func:`static_check`): selector, arch, runtime, ISA, precision. They read only what a
  device announces on its retained state topic, so ``view.static_index(spec)`` caches them per
  deployment and the scheduler never re-runs them per decision.
* dynamic (:data:`DYNAMIC_FILTERS`): online, draining, CPU, temperature, disk, memory, latency.
  They read telemetry and the pass's :class:`~fleet.scheduler.planner.Planner`, and run on the
  devices the scheduler's walk visits.

A filter returns ``None`` (passes) or the detail of its reason; the reason a user sees is
``"{name}: {detail}"``, e.g. ``"memory: needs 41 MB (measured), 23 MB free after the 64 MB reserve"``.

    variant, rejections = static_check(device, view.variants_of("digits", 3), spec)
    c = Candidate(device, variant)
    failed = [(name, why) for name, check in DYNAMIC_FILTERS if (why := check(ctx, c)) is not None]
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fleet.model import DeploymentSpec, Device, Placement, Rejection, Variant
from fleet.scheduler.config import MB, SchedulerConfig
from fleet.scheduler.planner import Planner

if TYPE_CHECKING:
    from fleet.scheduler.view import ClusterView, Stat

# A variant's runtime → the device runtimes that open it. LiteRT artifacts are TFLite
# flatbuffers: the frozen tflite_runtime package opens them too (edge_agent.runtime).
_LITERT = frozenset({"litert", "tflite_runtime", "tflite-runtime"})
RUNTIME_PROVIDERS: dict[str, frozenset[str]] = {
    "onnxruntime": frozenset({"onnxruntime"}),
    "litert": _LITERT,
    "tflite_runtime": _LITERT,
    "tflite-runtime": _LITERT,
}
# Between variants of equal precision and ISA, onnxruntime wins: the [agent] extra always
# installs it, LiteRT is optional. Measured latency then decides between devices, not formats.
_RUNTIME_RANK = {"onnxruntime": 0, "litert": 1, "tflite_runtime": 1, "tflite-runtime": 1}


def mb(n: float) -> str:
    """Bytes as the sentences print them: "41 MB", "2.5 MB", "0 MB"."""
    value = max(n, 0) / MB
    return f"{value:.1f} MB" if 0 < value < 10 else f"{value:.0f} MB"


def runtime_ok(runtime: str, device_runtimes: Iterable[str]) -> bool:
    providers = RUNTIME_PROVIDERS.get(runtime, frozenset({runtime}))
    return any(r in providers for r in device_runtimes)


def _names(values: Iterable[str]) -> str:
    return ", ".join(dict.fromkeys(values)) or "none"


# ---------------------------------------------------------------------------------------- static


def selector_reason(device: Device, selector: Mapping[str, str]) -> str | None:
    misses = []
    for key, want in selector.items():
        have = device.labels.get(key)
        if have is None:
            misses.append(f"wants {key}={want}, device has no {key} label")
        elif have != want:
            misses.append(f"wants {key}={want}, device has {key}={have}")
    return "; ".join(misses) or None


def _no(device: Device, name: str, detail: str) -> Rejection:
    return Rejection(device.id, f"{name}: {detail}", name)


def _fit(device: Device, variants: Sequence[Variant], spec: DeploymentSpec) -> tuple[Variant | None, list[Rejection]]:
    """The variant this device would run, or why none: arch and runtime are judged independently
    (a user sees both when both are wrong); ISA and precision narrow what those two let through."""
    out: list[Rejection] = []
    what = f"{spec.model}@{spec.version}"
    by_arch = [v for v in variants if v.arch == device.arch]
    if not variants:
        out.append(_no(device, "arch", f"no variant for {device.arch} ({what} has no published variants)"))
        return None, out
    if not by_arch:
        have = _names(v.arch for v in variants)
        out.append(_no(device, "arch", f"no variant for {device.arch} (model has {have})"))
    pool = by_arch or list(variants)
    runnable = [v for v in pool if runtime_ok(v.runtime, device.runtimes)]
    if not runnable:
        scope = f"the {device.arch} variants need" if by_arch else "the variants need"
        need = " or ".join(dict.fromkeys(v.runtime for v in pool))
        have = _names(sorted(device.runtimes))
        out.append(_no(device, "runtime", f"{scope} {need}; device has {have}"))
    if out:
        return None, out
    fits_isa = [v for v in runnable if v.isa <= device.isa]
    if not fits_isa:
        missing = {v.target: sorted(v.isa - device.isa) for v in runnable}
        detail = "; ".join(f"{t} needs {', '.join(m)}" for t, m in missing.items())
        out.append(_no(device, "isa", f"every {device.arch} variant needs ISA features the device lacks ({detail})"))
        return None, out
    preferred = [v for v in fits_isa if v.precision in spec.precisions]
    if not preferred:
        could = _names(v.precision for v in fits_isa)
        accepts = ", ".join(spec.precisions)
        out.append(_no(device, "precision", f"the device can run {could}, the deployment accepts {accepts}"))
        return None, out
    rank = {p: i for i, p in enumerate(spec.precisions)}
    # Precision first (the user's order), then the most specific target the device supports
    # (avx512-vnni beats avx2 on a VNNI host), then the runtime; file/target keep ties stable.
    best = min(preferred, key=lambda v: (rank[v.precision], -len(v.isa), _RUNTIME_RANK.get(v.runtime, 9),
                                         v.target, v.file))
    return best, out


def variant_for(device: Device, variants: Sequence[Variant], spec: DeploymentSpec) -> Variant | None:
    """The variant ``device`` should run: right arch, a runtime it has, an ISA subset of its own,
    best by ``spec.precisions`` order, then by target specificity. None if nothing fits."""
    return _fit(device, variants, spec)[0]


def static_check(device: Device, variants: Sequence[Variant], spec: DeploymentSpec) -> tuple[Variant | None,
                                                                                              list[Rejection]]:
    """Every static reason against ``device`` (selector, arch, runtime, ISA, precision) and its variant."""
    variant, out = _fit(device, variants, spec)
    why = selector_reason(device, spec.selector) if spec.selector else None
    if why is not None:
        out.insert(0, _no(device, "selector", why))
    return (variant if not out else None), out


# --------------------------------------------------------------------------------------- dynamic


@dataclass
class Context:
    """What every filter and scorer of one pass reads; built once per schedule/explain call."""

    view: ClusterView
    spec: DeploymentSpec
    config: SchedulerConfig
    planner: Planner
    existing: Mapping[str, Placement]  # the deployment's replicas in the view, by device
    planned: set[str]  # devices bound to it in this pass (the planner's, then this call's)
    zones: dict[str, int] = field(default_factory=dict)  # topology label value → replicas there
    replicas: int = 0  # replicas of the deployment, existing + planned − being unbound

    def hosts(self, device_id: str) -> bool:
        return device_id in self.existing or device_id in self.planned


class Candidate:
    """One (device, variant) under evaluation. Filters record what they computed (memory need,
    latency) so the scorers reuse it instead of looking it up again."""

    __slots__ = ("device", "free_after", "key", "latency", "need", "need_source", "variant")

    def __init__(self, device: Device, variant: Variant, key: str | None = None) -> None:
        self.device = device
        self.variant = variant
        self.key = key if key is not None else variant.key
        self.need = 0
        self.need_source = "estimate"
        self.free_after = 0  # memory left after this replica, the reserve and promises
        self.latency: Stat | None = None


def estimate_memory(variant: Variant, device: Device, view: ClusterView,
                    config: SchedulerConfig | None = None, key: str | None = None) -> tuple[int, str]:
    """Memory ``variant`` will take on ``device``: (bytes, "measured" | "class" | "estimate").

    Measured on this device beats the median of its class, which beats the estimate from the
    artifact (size × ``artifact_memory_factor`` + the runtime's overhead).
    """
    found = view.memory(device.id, key if key is not None else variant.key)
    if found is not None:
        return int(found.value), found.source
    cfg = config if config is not None else _defaults()
    return int(variant.size_bytes * cfg.artifact_memory_factor) + cfg.runtime_overhead(variant.runtime), "estimate"


def _defaults() -> SchedulerConfig:
    from fleet.scheduler.config import DEFAULTS

    return DEFAULTS


def disk_need(variant: Variant) -> int:
    return variant.size_bytes + variant.manifest_size


def _online(ctx: Context, c: Candidate) -> str | None:
    d = c.device
    if d.online:
        return None
    if d.last_seen <= 0:
        return "device is offline (never seen)"
    return f"device is offline (last seen {max(ctx.view.now - d.last_seen, 0):.0f} s ago)"


def _draining(ctx: Context, c: Candidate) -> str | None:
    return "device is draining: it takes no new replicas" if c.device.draining else None


def _cpu(ctx: Context, c: Candidate) -> str | None:
    limit = ctx.config.max_cpu_percent
    load = c.device.cpu_percent
    return f"load {load:.1f}% > max {limit:g}%" if load > limit else None


def _temperature(ctx: Context, c: Candidate) -> str | None:
    t = c.device.temperature_c
    limit = ctx.config.max_temperature_c
    # No sensor (most x86 VMs) is not a reason: nothing says the device is hot.
    return f"{t:.1f} °C > max {limit:g} °C" if t is not None and t > limit else None


def _disk(ctx: Context, c: Candidate) -> str | None:
    d = c.device
    if d.disk_free <= 0:
        return "free space not reported yet"
    need = disk_need(c.variant)
    reserve = ctx.config.disk_reserve_bytes
    pending = ctx.planner.disk_promised(d.id) + ctx.view.in_flight_disk(d.id)
    free = d.disk_free - reserve - pending
    if need <= free:
        return None
    extra = f" and {mb(pending)} for downloads under way" if pending else ""
    return f"needs {mb(need)} for the artifact, {mb(free)} free after the {mb(reserve)} reserve{extra}"


def _memory(ctx: Context, c: Candidate) -> str | None:
    d, cfg, view = c.device, ctx.config, ctx.view
    need, source = estimate_memory(c.variant, d, view, cfg, c.key)
    c.need, c.need_source = need, source
    # Telemetry cannot show replicas that are not loaded yet, so those and this pass's promises
    # are charged here; a device without telemetry yet is judged on its total memory.
    promised = ctx.planner.memory_promised(d.id)
    pending = promised + view.in_flight_memory(d.id, cfg)
    reserve = cfg.memory_reserve_bytes
    free = (d.memory_available or d.memory_total) - reserve - pending
    c.free_after = free - need
    if need > free:
        if not (d.memory_available or d.memory_total):
            return f"needs {mb(need)} ({source}), free memory not reported yet"
        extra = f" and {mb(pending)} promised to replicas not loaded yet" if pending else ""
        return f"needs {mb(need)} ({source}), {mb(free)} free after the {mb(reserve)} reserve{extra}"
    if d.memory_budget is not None:
        # The agent refuses a model beyond its budget (edge_agent.reconcile): don't send it one.
        left = d.memory_budget - view.model_memory(d.id, cfg) - promised
        if need > left:
            return f"needs {mb(need)} ({source}), the agent's {mb(d.memory_budget)} model budget has {mb(left)} left"
    return None


def _latency(ctx: Context, c: Candidate) -> str | None:
    found = ctx.view.latency(c.device.id, c.key)
    c.latency = found
    slo = ctx.spec.max_p95_ms
    # Unknown latency passes: the first replica on a device class is how it gets measured.
    if slo is None or found is None or found.value <= slo:
        return None
    if found.source == "measured":
        return f"measured p95 {found.value:.1f} ms on this device > SLO {slo:g} ms"
    return (f"p95 {found.value:.1f} ms on {found.cls} (median of {found.samples} devices) > SLO {slo:g} ms")


def _replica(ctx: Context, c: Candidate) -> str | None:
    return f"already runs a replica of {ctx.spec.name}" if ctx.hosts(c.device.id) else None


Filter = Callable[[Context, Candidate], "str | None"]
# Cheapest and most selective first: the scheduler stops at the first failure.
DYNAMIC_FILTERS: tuple[tuple[str, Filter], ...] = (
    ("online", _online),
    ("draining", _draining),
    ("cpu", _cpu),
    ("temperature", _temperature),
    ("disk", _disk),
    ("memory", _memory),
    ("latency", _latency),
)
# Checked separately: the scheduler skips hosts with a set lookup, explain reports them.
REPLICA_FILTER: tuple[str, Filter] = ("replica", _replica)
# Filters that mean nothing without a variant (explain skips them when static filters failed).
NEEDS_VARIANT = frozenset({"disk", "memory", "latency"})
STATIC_FILTERS = ("selector", "arch", "runtime", "isa", "precision")


def first_failure(ctx: Context, c: Candidate) -> Rejection | None:
    """The first dynamic filter ``c`` fails, as a Rejection (the scheduler's fast path)."""
    for name, check in DYNAMIC_FILTERS:
        why = check(ctx, c)
        if why is not None:
            return Rejection(c.device.id, f"{name}: {why}", name)
    return None
