"""Scorers: how good a feasible device is for this replica, each in [-1, 1] (1 = best).

Normalization follows Nomad's: the final score is the plain mean of the scorers that had an
opinion. A scorer returns ``None`` when it has none (no latency measured, no topology label,
no replica placed yet), so a device is neither rewarded nor punished for a missing number.

=================  =====================================================================
binpack / spread   memory in use after the replica, u in [0, 1]: binpack 2u − 1 (fuller
                   devices first, whole devices stay free), spread 1 − 2u (emptier first)
latency            p95 of the variant, measured here or on the device's class:
                   (ref − p95) / (ref + p95); ref = half the SLO, else
                   ``config.latency_reference_ms``. 1 at 0 ms, 0 at ref, → −1 when slow
load               CPU: 1 − 2 × cpu% / 100 (idle 1, saturated −1)
anti_affinity      replicas of this deployment that share the device's topology label
                   (``config.topology_label``, "zone"): 1 − 2 × same / all replicas
=================  =====================================================================

    scores = score(ctx, candidate)          # {"binpack": 0.4, "latency": 0.71, "load": 0.8}
    total = normalize(scores)               # 0.637
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from fleet.scheduler.filters import Candidate, Context


def _used_after(ctx: Context, c: Candidate) -> float | None:
    total = c.device.memory_total
    if total <= 0:
        return None
    # free_after excludes the reserve; what's "used" for packing includes everything else.
    used = total - (c.free_after + ctx.config.memory_reserve_bytes)
    return min(max(used / total, 0.0), 1.0)


def binpack(ctx: Context, c: Candidate) -> float | None:
    u = _used_after(ctx, c)
    return None if u is None else 2.0 * u - 1.0


def spread(ctx: Context, c: Candidate) -> float | None:
    u = _used_after(ctx, c)
    return None if u is None else 1.0 - 2.0 * u


def latency_reference(ctx: Context) -> float:
    slo = ctx.spec.max_p95_ms
    return slo / 2.0 if slo else ctx.config.latency_reference_ms


def latency(ctx: Context, c: Candidate) -> float | None:
    found = c.latency
    if found is None:
        return None
    ref = latency_reference(ctx)
    p95 = max(found.value, 0.0)
    return (ref - p95) / (ref + p95)


def load(ctx: Context, c: Candidate) -> float | None:
    return 1.0 - 2.0 * min(max(c.device.cpu_percent, 0.0), 100.0) / 100.0


def anti_affinity(ctx: Context, c: Candidate) -> float | None:
    if ctx.replicas == 0:
        return None
    zone = c.device.labels.get(ctx.config.topology_label)
    if zone is None:
        return None
    return 1.0 - 2.0 * ctx.zones.get(zone, 0) / ctx.replicas


Scorer = Callable[[Context, Candidate], "float | None"]
PACKING: dict[str, Scorer] = {"binpack": binpack, "spread": spread}
SCORERS: tuple[tuple[str, Scorer], ...] = (("latency", latency), ("load", load), ("anti_affinity", anti_affinity))


def scorers_for(strategy: str) -> tuple[tuple[str, Scorer], ...]:
    """The packing scorer the deployment's strategy names, then the others."""
    try:
        packing = PACKING[strategy]
    except KeyError:
        raise ValueError(f"unknown strategy {strategy!r} (known: {', '.join(PACKING)})") from None
    return ((strategy, packing), *SCORERS)


def score(ctx: Context, c: Candidate, scorers: tuple[tuple[str, Scorer], ...]) -> dict[str, float]:
    """Each scorer's opinion of ``c``, leaving out those that have none."""
    out: dict[str, float] = {}
    for name, scorer in scorers:
        value = scorer(ctx, c)
        if value is not None:
            out[name] = value
    return out


def normalize(scores: Mapping[str, float]) -> float:
    """The mean of the scores given (0.0 when no scorer had an opinion)."""
    return sum(scores.values()) / len(scores) if scores else 0.0

