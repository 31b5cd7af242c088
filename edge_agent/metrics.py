"""Per-model serving metrics: counts and a window of recent latencies for p50/p95/p99.

Thread-safe; ``record`` is O(1) (a ring of the last ``window`` latencies) so it can sit on the
inference path::

    m = ModelMetrics()
    m.record(0.0021, ok=True)
    m.snapshot().p95_ms
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class MetricsSnapshot:
    requests: int
    errors: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _quantile(sorted_values: list[float], q: float) -> float:
    # Nearest-rank on the window: no interpolation, so a reported p99 is a latency that happened.
    idx = min(len(sorted_values) - 1, max(0, round(q * len(sorted_values) + 0.5) - 1))
    return sorted_values[idx]


class ModelMetrics:
    """Counters since start plus the last ``window`` latencies (successful requests only)."""

    def __init__(self, window: int = 2048) -> None:
        self._lock = threading.Lock()
        self._ring = [0.0] * window
        self._n = 0  # latencies recorded (ring fill = min(_n, window))
        self.requests = 0
        self.errors = 0

    def record(self, seconds: float, *, ok: bool = True) -> None:
        with self._lock:
            self.requests += 1
            if not ok:
                self.errors += 1
                return
            self._ring[self._n % len(self._ring)] = seconds
            self._n += 1

    def snapshot(self) -> MetricsSnapshot:
        with self._lock:
            values = sorted(self._ring[: min(self._n, len(self._ring))])
            requests, errors = self.requests, self.errors
        if not values:
            return MetricsSnapshot(requests, errors, None, None, None)
        ms = [v * 1e3 for v in values]
        return MetricsSnapshot(requests, errors, _quantile(ms, 0.50), _quantile(ms, 0.95), _quantile(ms, 0.99))
