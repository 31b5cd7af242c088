"""The wire contract: messages round-trip, and every malformed one is refused with a reason."""

from __future__ import annotations

import json

import pytest

from edgectl import wire

SHA = "a" * 64


def _desired(**dep: object) -> bytes:
    base = {"name": "digits", "manifest_sha256": SHA, "manifest_size": 900, "variant": "m.int8.onnx"}
    base.update(dep)
    return wire.encode("desired", {"generation": 3, "deployments": [base]})


def test_desired_round_trips() -> None:
    d = wire.Desired(7, (wire.Deployment("digits", SHA, 900, "m.int8.onnx", wire.Guard(probation_s=5)),))
    assert wire.parse_desired(wire.desired_message(d)) == d


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\xff\xfe", "not JSON"),
        (b"[]", "not a JSON object"),
        (b'{"v": 2, "kind": "desired"}', "version 2"),
        (b'{"v": 1, "kind": "telemetry"}', "got kind"),
        (wire.encode("desired", {"generation": "7", "deployments": []}), "generation"),
        (wire.encode("desired", {"generation": True, "deployments": []}), "generation"),
        (wire.encode("desired", {"generation": 1, "deployments": {}}), "deployments"),
        (_desired(name="../etc"), "invalid name"),
        (_desired(name="a/b"), "invalid name"),
        (_desired(manifest_sha256="ABC"), "manifest_sha256"),
        (_desired(manifest_size=0), "out of range"),
        (_desired(manifest_size=1 << 30), "out of range"),
        (_desired(variant="../../x.onnx"), "invalid variant"),
        (_desired(guard="fast"), "guard"),
        (_desired(guard={"probation_s": "soon"}), "malformed guard"),
        (b"{" + b" " * wire.MAX_JSON_BYTES + b"}", "exceeds"),
    ],
)
def test_malformed_desired_is_refused(payload: bytes, reason: str) -> None:
    with pytest.raises(wire.WireError, match=reason):
        wire.parse_desired(payload)


def test_a_deployment_listed_twice_is_refused() -> None:
    dep = {"name": "d", "manifest_sha256": SHA, "manifest_size": 10, "variant": "m.onnx"}
    with pytest.raises(wire.WireError, match="twice"):
        wire.parse_desired(wire.encode("desired", {"generation": 1, "deployments": [dep, dep]}))


def test_chunk_request_round_trips_and_bounds() -> None:
    req = wire.ChunkRequest(SHA, 10, 4096)
    assert wire.parse_chunk_request(wire.chunk_request_message(req)) == req
    with pytest.raises(wire.WireError):
        wire.parse_chunk_request(wire.encode("chunk_get", {"sha256": SHA, "offset": 0, "length": 0}))


def test_report_carries_the_transition() -> None:
    msg = json.loads(wire.report_message("dev", "digits", "failed", manifest_sha256=SHA, generation=2,
                                         reason="bad signature", ts=1.0))
    assert msg["v"] == 1 and msg["kind"] == "report" and msg["state"] == "failed" and msg["reason"] == "bad signature"


@pytest.mark.parametrize("name", ["", ".hidden", "a/b", "a+b", "#", "x" * 129, 7, None])
def test_invalid_names(name: object) -> None:
    assert not wire.valid_name(name)


def _state(**over: object) -> bytes:
    body: dict[str, object] = {"device": "d1", "online": True, "ts": 1.0,
                               "capabilities": {"arch": "aarch64", "isa": ["neon"], "runtimes": {"onnxruntime": "1.20"},
                                                "labels": {"zone": "a"}, "memory_total_bytes": 4 << 30}}
    body.update(over)
    return wire.encode("state", body)


def test_state_and_will_parse() -> None:
    s = wire.parse_state(_state(), "d1")
    assert s.online and s.capabilities is not None and s.capabilities["arch"] == "aarch64"
    will = wire.parse_state(wire.encode("state", {"device": "d1", "online": False}), "d1")
    assert not will.online and will.capabilities is None


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (_state(device="d2"), "topic of 'd1'"),
        (_state(online="yes"), "online"),
        (_state(capabilities={"isa": []}), "arch"),
        (_state(capabilities={"arch": "x86_64", "isa": "avx2"}), "isa"),
        (_state(capabilities={"arch": "x86_64", "labels": {"a": 1}}), "labels"),
        (_state(capabilities={"arch": "x86_64", "memory_total_bytes": -5}), "memory_total_bytes"),
    ],
)
def test_malformed_state_is_refused(payload: bytes, reason: str) -> None:
    with pytest.raises(wire.WireError, match=reason):
        wire.parse_state(payload, "d1")


def _telemetry(**over: object) -> bytes:
    body: dict[str, object] = {
        "device": "d1", "ts": 5.0, "dropped": 0,
        "resources": {"cpu_percent": 12.5, "memory_total_bytes": 100, "memory_available_bytes": 50,
                      "disk_free_bytes": 10, "temperature_c": 48.0},
        "models": {"digits": {"requests": 3, "errors": 1, "p50_ms": 1.0, "p95_ms": 2.0, "p99_ms": None,
                              "memory_bytes": 7, "manifest_sha256": SHA, "variant": "m.onnx"}},
    }
    body.update(over)
    return wire.encode("telemetry", body)


def test_telemetry_parses() -> None:
    t = wire.parse_telemetry(_telemetry(), "d1")
    assert t.cpu_percent == 12.5 and t.temperature_c == 48.0 and t.memory_available == 50
    assert t.models["digits"].p95_ms == 2.0 and t.models["digits"].variant == "m.onnx"


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (_telemetry(device="x"), "topic"),
        (_telemetry(resources={"cpu_percent": "hot"}), "cpu_percent"),
        (_telemetry(resources={"temperature_c": 900}), "temperature"),
        (_telemetry(resources={"memory_available_bytes": float("nan")}), "memory_available_bytes"),
        (_telemetry(models={"a/b": {}}), "malformed"),
        (_telemetry(models={"m": {"requests": -1}}), "requests"),
        (_telemetry(models=[1]), "objects"),
    ],
)
def test_malformed_telemetry_is_refused(payload: bytes, reason: str) -> None:
    with pytest.raises(wire.WireError, match=reason):
        wire.parse_telemetry(payload, "d1")


def test_reports_parse_and_are_checked() -> None:
    ok = wire.report_message("d1", "digits", "serving", manifest_sha256=SHA, generation=3, reason=None, ts=2.0)
    r = wire.parse_report(ok, "d1")
    assert (r.deployment, r.state, r.generation) == ("digits", "serving", 3)
    with pytest.raises(wire.WireError, match="state"):
        wire.parse_report(wire.encode("report", {"device": "d1", "deployment": "digits", "state": "dancing"}), "d1")
    with pytest.raises(wire.WireError, match="topic"):
        wire.parse_report(ok, "d2")


@pytest.mark.parametrize(
    ("topic", "expected"),
    [
        ("edgectl/v1/devices/d1/state", ("d1", "state")),
        ("edgectl/v1/devices/d1/models/x/infer", None),
        ("edgectl/v2/devices/d1/state", None),
        ("other/v1/devices/d1/state", None),
    ],
)
def test_device_from_topic(topic: str, expected: tuple[str, str] | None) -> None:
    assert wire.device_from_topic(topic) == expected
