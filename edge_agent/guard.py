"""The regression guard: watch a freshly switched-in version and roll it back if it is worse.

For ``guard.probation_s`` seconds after the switch, the new version's metrics are compared with
the previous version's baseline (see :class:`edgectl.wire.Guard`):

- error rate above ``max_error_rate`` → roll back, once ``min_requests`` requests were seen;
- p95 above ``max_p95_ratio`` × the baseline's p95 → roll back, once ``min_requests`` requests
  were seen and both p95s are known (no baseline: this check is skipped).

A version that breaks neither rule until the probation ends has passed — also when it saw fewer
than ``min_requests`` requests: a model nobody calls cannot be judged, and it must not stay on
probation forever. The first final verdict sticks: a passed version is not rolled back later.

``current`` must be the new version's own metrics (a fresh ``ModelMetrics`` at the switch),
not counters carried over from the old version. Times come from ``time.monotonic()``.

    probation = Probation(deployment.guard, baseline=old_metrics.snapshot(), started=time.monotonic())
    verdict = probation.check(new_metrics.snapshot(), time.monotonic())
    if verdict.rollback:
        log.warning("rolling back %s: %s", name, verdict.reason)
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from edge_agent.metrics import MetricsSnapshot
from edgectl.wire import Guard


class Outcome(enum.Enum):
    WATCH = "watch"  # still on probation, nothing wrong yet
    PASSED = "passed"  # probation over: keep the new version
    ROLLBACK = "rollback"  # a rule broke: go back to the previous version


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    reason: str  # one line with the numbers, for the log and the rolled_back report

    @property
    def rollback(self) -> bool:
        return self.outcome is Outcome.ROLLBACK

    @property
    def passed(self) -> bool:
        return self.outcome is Outcome.PASSED

    @property
    def final(self) -> bool:
        return self.outcome is not Outcome.WATCH


class Probation:
    """One deployment's probation after a version switch; ``check`` it on every telemetry tick.

    >>> p = Probation(Guard(probation_s=60, max_error_rate=0.05, min_requests=20), None, started=0.0)
    >>> p.check(MetricsSnapshot(requests=40, errors=4, p50_ms=1, p95_ms=2, p99_ms=3), now=10.0).reason
    'error rate 10.0% (4/40 requests) > 5.0% allowed'
    """

    def __init__(self, guard: Guard, baseline: MetricsSnapshot | None, started: float) -> None:
        self.guard = guard
        self.baseline = baseline
        self.started = started
        self._final: Verdict | None = None

    def check(self, current: MetricsSnapshot, now: float) -> Verdict:
        if self._final is not None:
            return self._final
        verdict = self._judge(current, now)
        if verdict.final:
            self._final = verdict
        return verdict

    def _judge(self, current: MetricsSnapshot, now: float) -> Verdict:
        g = self.guard
        enough = current.requests >= g.min_requests
        if enough and current.error_rate > g.max_error_rate:
            return Verdict(
                Outcome.ROLLBACK,
                f"error rate {current.error_rate:.1%} ({current.errors}/{current.requests} requests)"
                f" > {g.max_error_rate:.1%} allowed",
            )
        base_p95 = self.baseline.p95_ms if self.baseline is not None else None
        if enough and base_p95 is not None and current.p95_ms is not None and base_p95 > 0:
            ratio = current.p95_ms / base_p95
            if ratio > g.max_p95_ratio:
                return Verdict(
                    Outcome.ROLLBACK,
                    f"p95 {current.p95_ms:.2f} ms is {ratio:.2f}x the previous version's {base_p95:.2f} ms"
                    f" (> {g.max_p95_ratio:g}x allowed, {current.requests} requests)",
                )
        elapsed = now - self.started
        if elapsed >= g.probation_s:
            note = "" if enough else f" (only {current.requests} < {g.min_requests} requests: not judged)"
            return Verdict(Outcome.PASSED, f"passed {g.probation_s:g} s probation{note}")
        return Verdict(Outcome.WATCH, f"on probation for {g.probation_s - elapsed:.0f} more s")
