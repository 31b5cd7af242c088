"""Select and bind: the driver that runs filters and scorers over the fleet.

``schedule`` places replicas fast; ``explain`` evaluates every device and says why.

    planner = Planner()
    decision = schedule(view, spec, count=2, planner=planner, rng=random.Random(7))
    decision.choices          # [Choice(device="pi-07", variant=..., score=0.62, scores={...}), ...]
    decision.reason_summary   # "placed 2 of 2 replicas of digits (evaluated 24 of 3120 devices ...)"
    for v in explain(view, spec, device_id="pi-03"):
        print(v.device, [r.reason for r in v.rejections] or v.scores)

Sampling. Static feasibility (selector, arch, runtime, ISA, precision) comes from the view's
cached index. For each replica, the dynamic filters then run on a randomized walk over the
statically feasible devices, which stops after ``config.sample_size`` (K = 16) devices pass;
only those K are scored and the best is bound. The walk starts at a random position and moves
by a random stride coprime with the list's length, so it visits every device at most once and
reaches all of them when few fit: a replica is left unplaced only after every device was tried.

Why K = 16: the best of K random feasible devices is, in expectation, in the top 1/(K+1) ≈ 6%
of the feasible fleet, and the chance that none of them is in the top 25% is 0.75^16 ≈ 1%.
Nomad's service scheduler scores max(2, log2 n) nodes (14 at 10k); Kubernetes scores 5% of a
10k-node cluster (500). K = 16 scores a bit more than Nomad and keeps a decision at 10k devices
well under the 0.5 ms a 2,000 decisions/s goal allows, whatever the fleet's size. When every
remaining device gets a replica anyway (``count`` ≥ devices that could take one, e.g. deploy
``--all``), one exhaustive pass replaces the walks.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from edgectl.errors import UserError
from fleet.model import Choice, DeploymentSpec, Device, Placement, Rejection, Variant
from fleet.scheduler.config import DEFAULTS, SchedulerConfig
from fleet.scheduler.filters import (
    DYNAMIC_FILTERS,
    NEEDS_VARIANT,
    REPLICA_FILTER,
    Candidate,
    Context,
    disk_need,
    first_failure,
    mb,
    static_check,
)
from fleet.scheduler.planner import Planner
from fleet.scheduler.scorers import Scorer, normalize, score, scorers_for
from fleet.scheduler.view import ClusterView, StaticIndex

Scorers = tuple[tuple[str, Scorer], ...]


class UnknownDeviceError(UserError):
    """``explain --device`` named a device the registry does not know."""


@dataclass(frozen=True)
class Decision:
    """What one ``schedule`` call did: the binds it planned and why the rest was not placed.

    ``rejections`` holds the devices whose dynamic filters ran (one reason each: the first that
    failed); when a replica is unplaced it also holds every statically rejected device, so it
    then covers the whole fleet.
    """

    choices: list[Choice]
    rejections: list[Rejection]
    unplaced: int
    reason_summary: str
    evaluated: int = 0  # devices whose dynamic filters ran (summed over the replicas' walks)


@dataclass(frozen=True)
class Verdict:
    """``explain``'s answer for one device: every failing filter, or its scores and variant."""

    device: str
    variant: Variant | None
    rejections: tuple[Rejection, ...] = ()
    scores: Mapping[str, float] = field(default_factory=dict)
    score: float | None = None
    notes: tuple[str, ...] = ()  # how the numbers were obtained: "memory: 41 MB (measured)"

    @property
    def feasible(self) -> bool:
        return not self.rejections


def _context(view: ClusterView, spec: DeploymentSpec, config: SchedulerConfig, planner: Planner) -> Context:
    # O(this pass's binds and unbinds), not O(replicas): a call costs the same for a deployment
    # with 5 replicas or 5,000.
    existing = view.placements_of(spec.name)
    planned = set(planner.planned_devices(spec.name))
    label = config.topology_label
    zones = dict(view.replica_zones(spec.name, label))
    ctx = Context(view, spec, config, planner, existing, planned, zones, len(existing))

    def shift(device_id: str, by: int) -> None:
        ctx.replicas += by
        device = view.devices.get(device_id)
        zone = device.labels.get(label) if device is not None else None
        if zone is not None:
            zones[zone] = zones.get(zone, 0) + by

    for device_id in planned - existing.keys():  # bound earlier in this pass
        shift(device_id, 1)
    # Replicas being removed in this pass still block their device, but no longer hold a zone.
    for p in planner.unbinds:
        if p.deployment == spec.name and p.device in existing:
            shift(p.device, -1)
    return ctx


def _step(n: int, rng: random.Random) -> int:
    """A random stride coprime with n: i → i + step (mod n) is then a full cycle of 0..n-1."""
    if n <= 2:
        return 1
    step = rng.randrange(1, n)
    while math.gcd(step, n) != 1:
        step = step + 1 if step + 1 < n else 1
    return step


def _walk(ctx: Context, index: StaticIndex, rng: random.Random, k: int,
          rejected: dict[str, Rejection]) -> tuple[list[Candidate], int]:
    """Up to k devices that pass every dynamic filter, in randomized order; and how many were tried."""
    ids, n = index.ids, len(index.ids)
    if n == 0:
        return [], 0
    existing, planned, variant, keys, devices = ctx.existing, ctx.planned, index.variant, index.keys, ctx.view.devices
    step, i = _step(n, rng), rng.randrange(n)
    found: list[Candidate] = []
    tried = 0
    for _ in range(n):
        dev_id = ids[i]
        i += step
        if i >= n:
            i -= n
        if dev_id in existing or dev_id in planned:
            continue
        tried += 1
        c = Candidate(devices[dev_id], variant[dev_id], keys[dev_id])
        why = first_failure(ctx, c)
        if why is not None:
            rejected[dev_id] = why
            continue
        found.append(c)
        if len(found) >= k:
            break
    return found, tried


def _ranked(ctx: Context, candidates: Sequence[Candidate], scorers: Scorers) -> list[tuple[float, dict[str, float],
                                                                                           Candidate]]:
    rows = []
    for c in candidates:
        s = score(ctx, c, scorers)
        rows.append((normalize(s), s, c))
    # Stable sort: ties keep the walk's (random) order, so equal devices share the load.
    rows.sort(key=lambda row: -row[0])
    return rows


def _bind(ctx: Context, total: float, scores: dict[str, float], c: Candidate) -> Choice:
    spec, dev = ctx.spec, c.device
    placement = Placement(deployment=spec.name, device=dev.id, variant=c.variant, state="pending", since=ctx.view.now)
    ctx.planner.bind(placement, memory_bytes=c.need, disk_bytes=disk_need(c.variant))
    ctx.planned.add(dev.id)
    ctx.replicas += 1
    zone = dev.labels.get(ctx.config.topology_label)
    if zone is not None:
        ctx.zones[zone] = ctx.zones.get(zone, 0) + 1
    return Choice(device=dev.id, variant=c.variant, score=total, scores=scores)


def _fills(ctx: Context, index: StaticIndex, count: int) -> bool:
    """Whether ``count`` covers every statically feasible device without a replica."""
    upper = len(index.ids)
    if count < upper - len(ctx.existing) - len(ctx.planned):
        return False  # fewer wanted than even the worst case leaves open: O(1), the usual answer
    return count >= upper - sum(1 for d in {*ctx.existing, *ctx.planned} if d in index.variant)


def schedule(
    view: ClusterView,
    spec: DeploymentSpec,
    count: int,
    planner: Planner,
    config: SchedulerConfig = DEFAULTS,
    rng: random.Random | None = None,
) -> Decision:
    """Choose up to ``count`` new devices for replicas of ``spec`` and bind them in ``planner``.

    Never picks a device that already runs (or is planned to run) a replica of ``spec.name``.
    Pass a seeded ``rng`` for a reproducible decision.
    """
    rng = rng if rng is not None else random.Random()
    scorers = scorers_for(spec.strategy)
    if config.cache_static:
        index = view.static_index(spec)
    else:
        index = StaticIndex(spec, view.variants_of(spec.model, spec.version), view.devices.values())
    ctx = _context(view, spec, config, planner)
    rejected: dict[str, Rejection] = {}
    choices: list[Choice] = []
    evaluated = 0
    k = config.sample_size if config.sample_size > 0 else len(index.ids)
    if _fills(ctx, index, count):
        # Every device that can take one gets one: a single exhaustive pass, no sampling.
        found, evaluated = _walk(ctx, index, rng, len(index.ids), rejected)
        for total, scores, c in _ranked(ctx, found, scorers)[:count]:
            choices.append(_bind(ctx, total, scores, c))
    else:
        for _ in range(count):
            found, tried = _walk(ctx, index, rng, k, rejected)
            evaluated += tried
            if not found:
                break
            # Re-scored per replica: anti-affinity changes with every bind.
            total, scores, c = _ranked(ctx, found, scorers)[0]
            choices.append(_bind(ctx, total, scores, c))
    unplaced = max(count, 0) - len(choices)
    rejections = list(rejected.values())
    if unplaced:
        rejections += [r for reasons in index.rejected.values() for r in reasons]
    summary = _summary(ctx, index, count, len(choices), rejected, evaluated, k)
    return Decision(choices, rejections, unplaced, summary, evaluated)


def _summary(ctx: Context, index: StaticIndex, count: int, placed: int, rejected: Mapping[str, Rejection],
             evaluated: int, k: int) -> str:
    spec = ctx.spec
    head = f"placed {placed} of {count} replica{'s' if count != 1 else ''} of {spec.name}"
    if count <= 0:
        return f"{head}: nothing to place"
    if not index.variants:
        return f"{head}: {spec.model}@{spec.version} has no published variants"
    if placed == count:
        return f"{head} (evaluated {evaluated} of {len(index.ids)} devices with a variant; sample size {k})"
    # Unplaced means the last walk tried every device: these counts cover the whole fleet.
    counts = index.counts() + Counter(r.filter for r in rejected.values())
    parts = [f"{n} {name}" for name, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    hosting = len({*ctx.existing, *ctx.planned}) - placed
    if hosting:
        parts.append(f"{hosting} already run it")
    return (f"{head}; {count - placed} unplaced: no other device fits "
            f"({len(ctx.view.devices)} devices: {', '.join(parts) or 'none registered'})")


# A stand-in for the filters that never read the variant (online, CPU, ...) when a device has
# none: explain still reports those reasons next to "arch: no variant for ...".
_NO_VARIANT = Variant(model="", version=0, target="", arch="", isa=frozenset(), runtime="", precision="",
                      format="", file="", size_bytes=0, manifest_sha256="", manifest_size=0)


def _notes(ctx: Context, c: Candidate) -> tuple[str, ...]:
    v = c.variant
    if c.need_source == "estimate":
        overhead = ctx.config.runtime_overhead(v.runtime)
        memory = (f"memory: {mb(c.need)} (estimate: {mb(v.size_bytes)} artifact × "
                  f"{ctx.config.artifact_memory_factor:g} + {mb(overhead)} {v.runtime})")
    else:
        memory = f"memory: {mb(c.need)} ({c.need_source})"
    found = c.latency
    if found is None:
        latency = "latency: not measured on this device or its class; allowed as a probe"
    elif found.source == "measured":
        latency = f"latency: p95 {found.value:.1f} ms (measured on this device)"
    else:
        latency = f"latency: p95 {found.value:.1f} ms (median of {found.samples} {found.cls} devices)"
    return f"variant: {v.key}", memory, latency


def _verdict(ctx: Context, device: Device, variants: Sequence[Variant], scorers: Scorers) -> Verdict:
    variant, static = static_check(device, variants, ctx.spec)
    rejections = list(static)
    c = Candidate(device, variant if variant is not None else _NO_VARIANT, "" if variant is None else None)
    for name, check in (REPLICA_FILTER, *DYNAMIC_FILTERS):
        if variant is None and name in NEEDS_VARIANT:
            continue
        why = check(ctx, c)
        if why is not None:
            rejections.append(Rejection(device.id, f"{name}: {why}", name))
    if variant is None:
        return Verdict(device.id, None, tuple(rejections))
    notes = _notes(ctx, c)
    if rejections:
        return Verdict(device.id, variant, tuple(rejections), notes=notes)
    scores = score(ctx, c, scorers)
    return Verdict(device.id, variant, (), scores, normalize(scores), notes)


def explain(
    view: ClusterView,
    spec: DeploymentSpec,
    device_id: str | None = None,
    config: SchedulerConfig = DEFAULTS,
    planner: Planner | None = None,
) -> list[Verdict]:
    """Evaluate every device (or one) against every filter, without sampling or caches.

    Feasible devices come first, best score first; then the rejected ones by id. Each rejected
    device lists all the filters it fails, not just the first.
    """
    if device_id is not None and device_id not in view.devices:
        raise UnknownDeviceError(f"no device {device_id!r} in the registry: `edgectl fleet status` lists them")
    ctx = _context(view, spec, config, planner if planner is not None else Planner())
    scorers = scorers_for(spec.strategy)
    variants = view.variants_of(spec.model, spec.version)
    devices = [view.devices[device_id]] if device_id is not None else list(view.devices.values())
    out = [_verdict(ctx, d, variants, scorers) for d in devices]
    out.sort(key=lambda v: (not v.feasible, -(v.score or 0.0), v.device))
    return out
