"""The MQTT contract between agents and the controller: topics and versioned JSON messages.

Every topic lives under ``edgectl/v1/``. Every JSON message carries ``"v": 1``; a reader
rejects other versions, unknown kinds and malformed fields with ``WireError`` (a one-line
reason the receiver logs before dropping the message — nothing from the wire crashes a
process).

    topic                                   dir         retained  body
    devices/{id}/state                      agent→fleet yes       online flag + capabilities
    devices/{id}/telemetry                  agent→fleet no        resources + per-model metrics
    devices/{id}/desired                    fleet→agent yes       deployments, generation
    devices/{id}/report                     agent→fleet no        one deployment transition
    artifacts/get                           agent→fleet no        chunk request (JSON); the reply
                                                                  goes to the MQTT 5 response
                                                                  topic with the correlation data
    devices/{id}/models/{name}/infer        client→agent no       inference request

Chunk replies are raw bytes with user properties ``status`` ("ok" | "error"), ``sha256`` of
the chunk, and ``error`` when status is "error".
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from edgectl.errors import EdgectlError

PREFIX = "edgectl/v1"
VERSION = 1
MAX_JSON_BYTES = 1 << 20  # 1 MiB: larger JSON control messages are refused unread
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class WireError(EdgectlError):
    """A message from the wire is malformed, oversized or of an unknown version."""


# --- topics ---------------------------------------------------------------------------------

def device_topic(device_id: str, leaf: str) -> str:
    return f"{PREFIX}/devices/{device_id}/{leaf}"


def state_topic(device_id: str) -> str:
    return device_topic(device_id, "state")


def telemetry_topic(device_id: str) -> str:
    return device_topic(device_id, "telemetry")


def desired_topic(device_id: str) -> str:
    return device_topic(device_id, "desired")


def report_topic(device_id: str) -> str:
    return device_topic(device_id, "report")


def infer_topic(device_id: str, model: str) -> str:
    return f"{PREFIX}/devices/{device_id}/models/{model}/infer"


def chunk_reply_topic(device_id: str) -> str:
    return f"{PREFIX}/artifacts/reply/{device_id}"


CHUNK_REQUEST_TOPIC = f"{PREFIX}/artifacts/get"
# Controllers share chunk requests between them (MQTT 5 shared subscription).
CHUNK_REQUEST_SHARED = f"$share/edgectl-artifacts/{CHUNK_REQUEST_TOPIC}"


def valid_name(name: object) -> bool:
    """Device ids, model and file names: no slashes, no wildcards, no leading dot."""
    return isinstance(name, str) and bool(_NAME.match(name))


def valid_sha256(value: object) -> bool:
    return isinstance(value, str) and bool(_SHA256.match(value))


# --- encoding -------------------------------------------------------------------------------

def encode(kind: str, body: dict[str, Any]) -> bytes:
    return json.dumps({"v": VERSION, "kind": kind, **body}, separators=(",", ":"), sort_keys=True).encode()


def decode(payload: bytes, kind: str) -> dict[str, Any]:
    """Parse and check the envelope of a JSON message of ``kind``."""
    if len(payload) > MAX_JSON_BYTES:
        raise WireError(f"{kind} message of {len(payload)} bytes exceeds {MAX_JSON_BYTES}")
    try:
        msg = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise WireError(f"{kind} message is not JSON ({exc})") from exc
    if not isinstance(msg, dict):
        raise WireError(f"{kind} message is not a JSON object")
    if msg.get("v") != VERSION:
        raise WireError(f"{kind} message has version {msg.get('v')!r}; this edgectl speaks v{VERSION}")
    if msg.get("kind") != kind:
        raise WireError(f"expected a {kind} message, got kind {msg.get('kind')!r}")
    return msg


def _field(msg: dict[str, Any], key: str, typ: type | tuple[type, ...], kind: str) -> Any:
    value = msg.get(key)
    if not isinstance(value, typ) or (isinstance(value, bool) and typ is not bool):
        raise WireError(f"{kind} message: field {key!r} is missing or not {getattr(typ, '__name__', typ)}")
    return value


# --- desired state --------------------------------------------------------------------------

@dataclass(frozen=True)
class Guard:
    """Roll back a new version when, within ``probation_s`` of switching to it, its error rate
    exceeds ``max_error_rate`` or its p95 latency exceeds ``max_p95_ratio`` × the previous one."""

    probation_s: float = 60.0
    max_error_rate: float = 0.05
    max_p95_ratio: float = 2.0
    min_requests: int = 20


@dataclass(frozen=True)
class Deployment:
    """One model the device should serve: which artifact (by manifest hash) and which file."""

    name: str
    manifest_sha256: str
    manifest_size: int
    variant: str  # the artifact file to serve, e.g. "digits_cnn.int8.onnx"
    guard: Guard = field(default_factory=Guard)


@dataclass(frozen=True)
class Desired:
    generation: int
    deployments: tuple[Deployment, ...]


def desired_message(desired: Desired) -> bytes:
    return encode(
        "desired",
        {
            "generation": desired.generation,
            "deployments": [
                {
                    "name": d.name,
                    "manifest_sha256": d.manifest_sha256,
                    "manifest_size": d.manifest_size,
                    "variant": d.variant,
                    "guard": {
                        "probation_s": d.guard.probation_s,
                        "max_error_rate": d.guard.max_error_rate,
                        "max_p95_ratio": d.guard.max_p95_ratio,
                        "min_requests": d.guard.min_requests,
                    },
                }
                for d in desired.deployments
            ],
        },
    )


def parse_desired(payload: bytes) -> Desired:
    msg = decode(payload, "desired")
    generation = _field(msg, "generation", int, "desired")
    items = _field(msg, "deployments", list, "desired")
    seen: set[str] = set()
    deployments = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise WireError(f"desired message: deployments[{i}] is not an object")
        name = item.get("name")
        if not valid_name(name):
            raise WireError(f"desired message: deployments[{i}] has an invalid name {name!r}")
        assert isinstance(name, str)
        if name in seen:
            raise WireError(f"desired message: deployment {name!r} is listed twice")
        seen.add(name)
        sha = item.get("manifest_sha256")
        if not valid_sha256(sha):
            raise WireError(f"desired message: deployment {name!r} has an invalid manifest_sha256")
        size = _field(item, "manifest_size", int, "desired")
        if not 0 < size <= MAX_JSON_BYTES:
            raise WireError(f"desired message: deployment {name!r} has manifest_size {size} out of range")
        variant = item.get("variant")
        if not valid_name(variant):
            raise WireError(f"desired message: deployment {name!r} has an invalid variant {variant!r}")
        g = item.get("guard") or {}
        if not isinstance(g, dict):
            raise WireError(f"desired message: deployment {name!r} has a guard that is not an object")
        try:
            guard = Guard(
                probation_s=float(g.get("probation_s", Guard.probation_s)),
                max_error_rate=float(g.get("max_error_rate", Guard.max_error_rate)),
                max_p95_ratio=float(g.get("max_p95_ratio", Guard.max_p95_ratio)),
                min_requests=int(g.get("min_requests", Guard.min_requests)),
            )
        except (TypeError, ValueError) as exc:
            raise WireError(f"desired message: deployment {name!r} has a malformed guard ({exc})") from exc
        deployments.append(Deployment(name, str(sha), size, str(variant), guard))
    return Desired(generation, tuple(deployments))


# --- chunk requests -------------------------------------------------------------------------

MAX_CHUNK = 1 << 20  # 1 MiB per chunk at most


@dataclass(frozen=True)
class ChunkRequest:
    sha256: str  # content address of the whole file
    offset: int
    length: int


def chunk_request_message(req: ChunkRequest) -> bytes:
    return encode("chunk_get", {"sha256": req.sha256, "offset": req.offset, "length": req.length})


def parse_chunk_request(payload: bytes) -> ChunkRequest:
    msg = decode(payload, "chunk_get")
    sha = msg.get("sha256")
    if not valid_sha256(sha):
        raise WireError("chunk_get message: sha256 is not 64 lowercase hex digits")
    offset = _field(msg, "offset", int, "chunk_get")
    length = _field(msg, "length", int, "chunk_get")
    if offset < 0 or not 0 < length <= MAX_CHUNK:
        raise WireError(f"chunk_get message: offset {offset} / length {length} out of range (max {MAX_CHUNK})")
    return ChunkRequest(str(sha), offset, length)


# --- reports --------------------------------------------------------------------------------

REPORT_STATES = (
    "downloading", "verifying", "installing", "loaded", "serving",
    "failed", "rolled_back", "removed", "rejected",
)


def report_message(
    device_id: str, deployment: str, state: str, *, manifest_sha256: str | None,
    generation: int, reason: str | None = None, ts: float,
) -> bytes:
    assert state in REPORT_STATES, state
    return encode(
        "report",
        {
            "device": device_id, "deployment": deployment, "state": state,
            "manifest_sha256": manifest_sha256, "generation": generation, "reason": reason, "ts": ts,
        },
    )


# --- what agents send: state, telemetry, reports --------------------------------------------

def _num(value: Any, what: str, *, optional: bool = False) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value or value in (
            float("inf"), float("-inf")) or value < 0:
        raise WireError(f"{what} must be a finite number ≥ 0, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class DeviceState:
    device: str
    online: bool
    capabilities: dict[str, Any] | None  # None in the last will
    ts: float | None


def parse_state(payload: bytes, device_id: str) -> DeviceState:
    """A retained ``state`` message; ``device_id`` is the one in the topic and must match."""
    msg = decode(payload, "state")
    if msg.get("device") != device_id:
        raise WireError(f"state message names device {msg.get('device')!r} on the topic of {device_id!r}")
    online = msg.get("online")
    if not isinstance(online, bool):
        raise WireError("state message: 'online' must be true or false")
    caps = msg.get("capabilities")
    if caps is not None:
        if not isinstance(caps, dict) or not isinstance(caps.get("arch"), str):
            raise WireError("state message: capabilities must be an object with an 'arch'")
        if not isinstance(caps.get("isa", []), list) or not all(isinstance(x, str) for x in caps.get("isa", [])):
            raise WireError("state message: capabilities.isa must be a list of strings")
        if not isinstance(caps.get("runtimes", {}), dict):
            raise WireError("state message: capabilities.runtimes must map runtime names to versions")
        labels = caps.get("labels", {})
        if not isinstance(labels, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
            raise WireError("state message: capabilities.labels must map strings to strings")
        for key in ("memory_total_bytes", "disk_free_bytes", "cpu_count"):
            if key in caps:
                _num(caps[key], f"state message: capabilities.{key}", optional=True)
    ts = _num(msg.get("ts"), "state message: ts", optional=True)
    return DeviceState(device_id, online, caps, ts)


@dataclass(frozen=True)
class ModelTelemetry:
    requests: int
    errors: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    memory_bytes: int | None
    manifest_sha256: str | None
    variant: str | None


@dataclass(frozen=True)
class Telemetry:
    device: str
    ts: float
    cpu_percent: float | None
    memory_total: int | None
    memory_available: int | None
    disk_free: int | None
    temperature_c: float | None
    models: dict[str, ModelTelemetry]
    dropped: int


def parse_telemetry(payload: bytes, device_id: str) -> Telemetry:
    msg = decode(payload, "telemetry")
    if msg.get("device") != device_id:
        raise WireError(f"telemetry names device {msg.get('device')!r} on the topic of {device_id!r}")
    res = msg.get("resources") or {}
    models = msg.get("models") or {}
    if not isinstance(res, dict) or not isinstance(models, dict):
        raise WireError("telemetry message: resources and models must be objects")
    temp = res.get("temperature_c")
    if temp is not None and (isinstance(temp, bool) or not isinstance(temp, int | float) or not -100 < temp < 200):
        raise WireError(f"telemetry message: temperature_c {temp!r} is not a temperature")

    def opt_int(v: Any, what: str) -> int | None:
        n = _num(v, what, optional=True)
        return None if n is None else int(n)

    parsed: dict[str, ModelTelemetry] = {}
    for name, m in models.items():
        if not valid_name(name) or not isinstance(m, dict):
            raise WireError(f"telemetry message: model entry {name!r} is malformed")
        sha = m.get("manifest_sha256")
        variant = m.get("variant")
        parsed[name] = ModelTelemetry(
            requests=int(_num(m.get("requests", 0), f"telemetry {name}.requests") or 0),
            errors=int(_num(m.get("errors", 0), f"telemetry {name}.errors") or 0),
            p50_ms=_num(m.get("p50_ms"), f"telemetry {name}.p50_ms", optional=True),
            p95_ms=_num(m.get("p95_ms"), f"telemetry {name}.p95_ms", optional=True),
            p99_ms=_num(m.get("p99_ms"), f"telemetry {name}.p99_ms", optional=True),
            memory_bytes=opt_int(m.get("memory_bytes"), f"telemetry {name}.memory_bytes"),
            manifest_sha256=str(sha) if valid_sha256(sha) else None,
            variant=str(variant) if valid_name(variant) else None,
        )
    return Telemetry(
        device=device_id,
        ts=float(_num(msg.get("ts"), "telemetry ts") or 0.0),
        cpu_percent=_num(res.get("cpu_percent"), "telemetry cpu_percent", optional=True),
        memory_total=opt_int(res.get("memory_total_bytes"), "telemetry memory_total_bytes"),
        memory_available=opt_int(res.get("memory_available_bytes"), "telemetry memory_available_bytes"),
        disk_free=opt_int(res.get("disk_free_bytes"), "telemetry disk_free_bytes"),
        temperature_c=None if temp is None else float(temp),
        models=parsed,
        dropped=int(_num(msg.get("dropped", 0), "telemetry dropped") or 0),
    )


@dataclass(frozen=True)
class Report:
    device: str
    deployment: str
    state: str
    manifest_sha256: str | None
    generation: int
    reason: str | None
    ts: float


def parse_report(payload: bytes, device_id: str) -> Report:
    msg = decode(payload, "report")
    if msg.get("device") != device_id:
        raise WireError(f"report names device {msg.get('device')!r} on the topic of {device_id!r}")
    dep = msg.get("deployment")
    if not valid_name(dep):
        raise WireError(f"report: deployment {dep!r} is not a valid name")
    state = msg.get("state")
    if state not in REPORT_STATES:
        raise WireError(f"report: state {state!r} is not one of {', '.join(REPORT_STATES)}")
    sha = msg.get("manifest_sha256")
    if sha is not None and not valid_sha256(sha):
        raise WireError("report: manifest_sha256 is not a sha256")
    gen = msg.get("generation", -1)
    if isinstance(gen, bool) or not isinstance(gen, int):
        raise WireError("report: generation must be an integer")
    reason = msg.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise WireError("report: reason must be a string")
    return Report(device_id, str(dep), str(state), sha, gen, None if reason is None else reason[:2000],
                  float(_num(msg.get("ts", 0), "report ts") or 0.0))


def device_from_topic(topic: str) -> tuple[str, str] | None:
    """``edgectl/v1/devices/{id}/{leaf}`` → (id, leaf); None for anything else."""
    parts = topic.split("/")
    if len(parts) != 5 or f"{parts[0]}/{parts[1]}" != PREFIX or parts[2] != "devices" or not valid_name(parts[3]):
        return None
    return parts[3], parts[4]
