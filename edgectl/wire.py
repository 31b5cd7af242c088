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
