"""The regression guard, table-driven: (guard, baseline, current, elapsed) → verdict."""

from __future__ import annotations

import pytest

from edge_agent.guard import Outcome, Probation
from edge_agent.metrics import MetricsSnapshot
from edgectl.wire import Guard

G = Guard(probation_s=60.0, max_error_rate=0.05, max_p95_ratio=2.0, min_requests=20)
BASE = MetricsSnapshot(requests=5_000, errors=3, p50_ms=4.0, p95_ms=10.0, p99_ms=14.0)


def snap(requests: int, errors: int = 0, p95: float | None = 10.0) -> MetricsSnapshot:
    return MetricsSnapshot(requests, errors, None if p95 is None else p95 / 2, p95, None if p95 is None else p95 * 1.5)


CASES = [
    # id, guard, baseline, current, seconds since switch, outcome, words the reason must contain
    ("healthy-early", G, BASE, snap(100, 1, 11.0), 10, Outcome.WATCH, ["50 more s"]),
    ("healthy-done", G, BASE, snap(600, 2, 11.0), 60, Outcome.PASSED, ["passed 60 s"]),
    ("errors", G, BASE, snap(100, 6), 10, Outcome.ROLLBACK, ["error rate 6.0%", "6/100", "5.0%"]),
    ("errors-at-threshold-ok", G, BASE, snap(100, 5), 10, Outcome.WATCH, []),
    ("errors-too-few-requests", G, BASE, snap(19, 19, None), 10, Outcome.WATCH, []),
    ("errors-at-min-requests", G, BASE, snap(20, 2), 10, Outcome.ROLLBACK, ["2/20"]),
    ("slow", G, BASE, snap(100, 0, 25.0), 10, Outcome.ROLLBACK, ["p95 25.00 ms", "2.50x", "10.00 ms", "> 2x"]),
    ("slow-at-threshold-ok", G, BASE, snap(100, 0, 20.0), 10, Outcome.WATCH, []),
    ("slow-too-few-requests", G, BASE, snap(19, 0, 90.0), 10, Outcome.WATCH, []),
    ("slow-without-baseline", G, None, snap(100, 0, 90.0), 10, Outcome.WATCH, []),
    ("slow-baseline-without-p95", G, snap(50, 50, None), snap(100, 0, 90.0), 10, Outcome.WATCH, []),
    ("errors-without-baseline", G, None, snap(100, 30), 10, Outcome.ROLLBACK, ["30/100"]),
    ("all-errors-no-p95", G, BASE, snap(40, 40, None), 10, Outcome.ROLLBACK, ["100.0%"]),
    ("errors-win-over-latency", G, BASE, snap(100, 50, 99.0), 10, Outcome.ROLLBACK, ["error rate"]),
    ("broken-at-the-last-check", G, BASE, snap(100, 0, 30.0), 61, Outcome.ROLLBACK, ["p95"]),
    ("idle-model-passes", G, BASE, snap(3, 3, None), 60, Outcome.PASSED, ["only 3 < 20 requests"]),
    ("strict-guard", Guard(30, 0.0, 1.1, 1), BASE, snap(1, 0, 11.5), 1, Outcome.ROLLBACK, ["1.15x"]),
    ("no-probation", Guard(0, 0.05, 2.0, 20), BASE, snap(0, 0, None), 0, Outcome.PASSED, []),
]


@pytest.mark.parametrize(("guard", "baseline", "current", "elapsed", "outcome", "words"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_verdicts(guard, baseline, current, elapsed, outcome, words):
    verdict = Probation(guard, baseline, started=1_000.0).check(current, now=1_000.0 + elapsed)
    assert verdict.outcome is outcome, verdict.reason
    assert verdict.rollback == (outcome is Outcome.ROLLBACK)
    assert verdict.final == (outcome is not Outcome.WATCH)
    for word in words:
        assert word in verdict.reason


def test_a_final_verdict_sticks():
    passed = Probation(G, BASE, started=0.0)
    assert passed.check(snap(100), now=60.0).outcome is Outcome.PASSED
    assert passed.check(snap(100, 100), now=61.0).outcome is Outcome.PASSED  # later trouble is not this guard's

    rolled = Probation(G, BASE, started=0.0)
    first = rolled.check(snap(100, 10), now=5.0)
    assert rolled.check(snap(10_000, 10), now=6.0) == first


def test_watching_then_rollback_as_requests_arrive():
    p = Probation(G, BASE, started=0.0)
    outcomes = [p.check(snap(n, n // 4), now=float(t)).outcome for t, n in [(1, 4), (2, 12), (3, 24), (4, 40)]]
    assert outcomes == [Outcome.WATCH, Outcome.WATCH, Outcome.ROLLBACK, Outcome.ROLLBACK]
