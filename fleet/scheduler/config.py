"""The scheduler's knobs, typed and frozen; ``DEFAULTS`` is what the controller uses unless told.

Read once at the entry point (CLI flags or the controller's config file) and passed down::

    from fleet.scheduler.config import DEFAULTS
    cfg = dataclasses.replace(DEFAULTS, memory_reserve_bytes=128 << 20, sample_size=32)
    decision = schedule(view, spec, 3, Planner(), config=cfg)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

MB = 1 << 20


def _runtime_overheads() -> Mapping[str, int]:
    # What a runtime costs before the model's own tensors: onnxruntime's import alone is ~30 MB
    # of RSS (edge_agent.capabilities), plus its arena; the LiteRT interpreter is a few MB.
    return MappingProxyType({"onnxruntime": 40 * MB, "litert": 8 * MB, "tflite_runtime": 8 * MB})


@dataclass(frozen=True)
class SchedulerConfig:
    """Thresholds of the filters, constants of the estimates and the sampling size.

    >>> SchedulerConfig(max_cpu_percent=75.0).max_cpu_percent
    75.0
    """

    # Kept free for the OS and the agent itself: a device at 0 bytes free swaps or OOM-kills.
    memory_reserve_bytes: int = 64 * MB
    # Installs stage next to the live version (stage → rename) and logs keep growing.
    disk_reserve_bytes: int = 256 * MB
    max_cpu_percent: float = 90.0
    # Raspberry Pi firmware starts soft-throttling at 80 °C: a model placed there runs slowly.
    max_temperature_c: float = 80.0
    # Unmeasured memory = artifact size × factor + runtime overhead. The factor covers the parsed
    # graph next to its weights and the activation arena; measured numbers replace it quickly.
    artifact_memory_factor: float = 2.0
    runtime_memory_overhead: Mapping[str, int] = field(default_factory=_runtime_overheads)
    # K of the randomized walk: stop after K feasible devices and score only those (core.py).
    # 0 = exhaustive: every device filtered and scored, as `explain` always does.
    sample_size: int = 16
    # False re-runs the static filters (arch, runtime, ISA, selector) on every device for every
    # decision instead of caching them per deployment: the benchmark's naive baseline.
    cache_static: bool = True
    # The label the anti-affinity scorer spreads replicas across.
    topology_label: str = "zone"
    # The latency scorer's midpoint when the deployment has no SLO: p95 at this value scores 0.
    latency_reference_ms: float = 50.0

    def runtime_overhead(self, runtime: str) -> int:
        return self.runtime_memory_overhead.get(runtime, 0)


DEFAULTS = SchedulerConfig()
