"""The controller's domain objects: what the scheduler reads and what the store keeps.

All are frozen; the store returns them, the scheduler reads them, and every change goes back
through the store (one writer per pass: ``fleet.scheduler.planner.Planner``). Sizes are bytes, times are seconds
since the epoch (``time.time()``), latencies milliseconds.

    device = Device(id="pi-01", arch="aarch64", isa=frozenset({"neon"}), runtimes=frozenset({"onnxruntime"}),
                    memory_total=4 << 30, online=True, ...)
    variant = Variant(model="digits", version=3, target="arm64-cortex-a72", file="digits_cnn.int8.onnx", ...)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Device:
    """One device as the controller last heard of it (retained state + latest telemetry)."""

    id: str
    arch: str
    isa: frozenset[str] = frozenset()
    runtimes: frozenset[str] = frozenset()  # "onnxruntime", "litert", "tflite_runtime"
    labels: Mapping[str, str] = field(default_factory=dict)
    online: bool = False
    draining: bool = False
    last_seen: float = 0.0  # last heartbeat (state or telemetry)
    memory_total: int = 0
    memory_available: int = 0  # from telemetry; 0 = unknown
    memory_budget: int | None = None  # the agent's model memory budget, when it has one
    disk_free: int = 0
    cpu_percent: float = 0.0
    temperature_c: float | None = None
    cpu_count: int = 1
    # The announced CPU model ("Cortex-A72"); with arch it names the device's class, whose
    # measurements stand in for a device that has none of its own (fleet.scheduler.view).
    cpu_model: str | None = None


@dataclass(frozen=True)
class Variant:
    """One artifact file of a published model version, built for one target."""

    model: str
    version: int
    target: str
    arch: str
    isa: frozenset[str]
    runtime: str  # "onnxruntime" | "litert"
    precision: str  # "int8" | "fp16" | "fp32"
    format: str  # "onnx" | "tflite"
    file: str
    size_bytes: int
    manifest_sha256: str
    manifest_size: int

    @property
    def key(self) -> str:
        return f"{self.model}@{self.version}/{self.target}/{self.file}"


@dataclass(frozen=True)
class DeploymentSpec:
    """What the user asked for with ``edgectl fleet deploy``."""

    name: str  # the deployment's name = the model's name
    model: str
    version: int
    replicas: int | None  # None = every matching device (--all)
    selector: Mapping[str, str] = field(default_factory=dict)
    max_p95_ms: float | None = None
    strategy: str = "binpack"  # "binpack" | "spread"
    canary_percent: float = 0.0
    max_unavailable: int = 1
    precisions: tuple[str, ...] = ("int8", "fp16", "fp32")  # preference order


@dataclass(frozen=True)
class Placement:
    """A replica of a deployment bound to a device, with the variant it runs."""

    deployment: str
    device: str
    variant: Variant
    state: str = "pending"  # pending → downloading … → serving | failed (the agent's reports)
    reason: str | None = None
    since: float = 0.0


@dataclass(frozen=True)
class Measured:
    """Observed p95 latency and memory of one variant on one device (from telemetry)."""

    device: str
    variant_key: str
    p95_ms: float | None
    memory_bytes: int | None


@dataclass(frozen=True)
class Rejection:
    device: str
    reason: str
    filter: str  # the filter's name, e.g. "memory", "arch"


@dataclass(frozen=True)
class Choice:
    device: str
    variant: Variant
    score: float
    scores: Mapping[str, float] = field(default_factory=dict)  # per scorer, in [-1, 1]
