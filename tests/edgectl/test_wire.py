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
