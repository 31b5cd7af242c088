"""The controller against real agents on the in-memory broker: place, fail over, roll out, roll
back, restart — with real signed artifacts, real runtimes and a real SQLite store."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.verify import load_trusted_keys
from edgectl import wire
from edgectl.transport.base import Message
from edgectl.transport.memory import MemoryBroker, MemoryTransport
from fleet.artifacts import ArtifactStore
from fleet.controller import Controller
from fleet.model import DeploymentSpec, Device, Placement
from fleet.ops import deploy, publish_dir, status
from fleet.store import StoreUnavailable, open_store, variants_from_manifest
from tests.fleet.fleet_rig import MemoryFleet, make_version, wait_until


@pytest.fixture
def fleet(tmp_path: Path, digits_artifacts) -> Iterator[tuple[MemoryFleet, Controller]]:
    f = MemoryFleet(tmp_path, digits_artifacts.public_key)
    ctl = Controller(f.fleet_config(), transport=MemoryTransport(f.broker, "controller"))
    ctl.start()
    yield f, ctl
    f.stop()
    ctl.stop()


def _publish(ctl: Controller, folder: Path) -> int:
    return publish_dir(ctl.store, ArtifactStore(ctl.cfg.artifact_dir), folder,
                       load_trusted_keys(ctl.cfg.trusted_keys)).version


def _deployment(ctl: Controller, name: str) -> dict:
    return next(d for d in status(ctl.store)["deployments"] if d["name"] == name)


def test_places_replicas_and_fails_over_when_a_device_dies(fleet, digits_artifacts) -> None:
    f, ctl = fleet
    for i in range(3):
        f.start_agent(f"dev-{i}")
    wait_until("3 devices online", lambda: sum(d.online for d in ctl.store.list_devices()) == 3)
    version = _publish(ctl, digits_artifacts.out_dir)
    deploy(ctl.store, DeploymentSpec("digits", "digits_cnn", version, replicas=2))
    wait_until("2 replicas serving", lambda: len(f.serving("digits")) == 2, timeout=60)
    wait_until("status says 2 running", lambda: _deployment(ctl, "digits")["running"] == 2)
    victim = sorted(f.serving("digits"))[0]
    f.kill_agent(victim)
    wait_until("the replica moves", lambda: len(f.serving("digits")) == 2 and victim not in f.serving("digits"),
               timeout=60)
    events = [e.kind for e in ctl.store.list_events(limit=1000)]
    assert "offline" in events and "replaced" in events
    devices = {d["id"]: d for d in status(ctl.store)["devices"]}
    assert devices[victim]["online"] is False


def test_rollout_then_rollback_of_a_bad_version(fleet, digits_artifacts, tmp_path: Path) -> None:
    f, ctl = fleet
    for i in range(3):
        f.start_agent(f"dev-{i}")
    wait_until("3 devices online", lambda: sum(d.online for d in ctl.store.list_devices()) == 3)
    v1 = _publish(ctl, digits_artifacts.out_dir)
    deploy(ctl.store, DeploymentSpec("digits", "digits_cnn", v1, replicas=3))
    wait_until("3 replicas of v1", lambda: len(f.serving("digits")) == 3, timeout=60)
    v1_versions = set(f.serving("digits").values())
    # A good v2: every replica moves, one batch (max_unavailable=1) at a time, canary first.
    good = make_version(digits_artifacts.out_dir, tmp_path / "v2", digits_artifacts.private_key, tag="v2")
    v2 = _publish(ctl, good)
    assert v2 == v1 + 1
    print(deploy(ctl.store, DeploymentSpec("digits", "digits_cnn", v2, replicas=3, canary_percent=34)))
    wait_until("every replica on v2", lambda: len(f.serving("digits")) == 3
               and not set(f.serving("digits").values()) & v1_versions, timeout=90)
    wait_until("rollout done", lambda: ctl.store.active_rollout("digits") is None, timeout=30)
    v2_versions = set(f.serving("digits").values())
    # A bad v3: its self-test fails on every device; the rollout stops at the canary and rolls back.
    bad = make_version(digits_artifacts.out_dir, tmp_path / "v3", digits_artifacts.private_key, tag="v3",
                       break_selftest=True)
    v3 = _publish(ctl, bad)
    deploy(ctl.store, DeploymentSpec("digits", "digits_cnn", v3, replicas=3, canary_percent=34))
    wait_until("rolled back", lambda: any(r.state == "rolled_back" for r in ctl.store.list_rollouts("digits")),
               timeout=90)
    wait_until("v2 everywhere again", lambda: set(f.serving("digits").values()) == v2_versions
               and _deployment(ctl, "digits")["running"] == 3, timeout=90)
    assert ctl.store.get_deployment("digits").version == v2
    kinds = [e.kind for e in ctl.store.list_events(limit=1000)]
    assert "rolled_back" in kinds and "rollout_done" in kinds


def test_restart_republishes_the_same_generations(fleet, digits_artifacts) -> None:
    f, ctl = fleet
    f.start_agent("dev-0")
    wait_until("online", lambda: any(d.online for d in ctl.store.list_devices()))
    deploy(ctl.store, DeploymentSpec("digits", "digits_cnn", _publish(ctl, digits_artifacts.out_dir), replicas=1))
    wait_until("serving", lambda: f.serving("digits"))
    before = json.loads(f.broker.retained(wire.desired_topic("dev-0")).payload)
    ctl.stop()
    again = Controller(ctl.cfg, transport=MemoryTransport(f.broker, "controller-2"), store=open_store(ctl.cfg.store_url))
    again.start()
    try:
        again.reconcile_once()
        after = json.loads(f.broker.retained(wire.desired_topic("dev-0")).payload)
        assert after == before  # same content, same generation: the agent has nothing to do
        assert len(again.store.list_placements("digits")) == 1
    finally:
        again.stop()


def test_malformed_device_messages_are_dropped(fleet) -> None:
    f, ctl = fleet
    junk = MemoryTransport(f.broker, "junk")
    junk.start()
    for leaf, payload in (("state", b"{"), ("telemetry", b'{"v": 1, "kind": "telemetry", "device": "x"}'),
                          ("report", b"\xff"), ("state", wire.encode("state", {"device": "other", "online": True}))):
        junk.publish(wire.device_topic("x", leaf), payload)
    assert f.broker.drain(5)
    wait_until("drops counted", lambda: ctl.counters.dropped == 4, timeout=5)
    ctl.reconcile_once()  # still works
    junk.stop()


def test_missed_heartbeats_move_replicas_when_no_will_arrives(tmp_path: Path, digits_artifacts) -> None:
    f = MemoryFleet(tmp_path, digits_artifacts.public_key)
    ctl = Controller(f.fleet_config(heartbeat_timeout_s=1.0), transport=MemoryTransport(f.broker, "controller"))
    ctl.start()
    try:
        for i in range(2):
            f.start_agent(f"dev-{i}")
        wait_until("2 devices online", lambda: sum(d.online for d in ctl.store.list_devices()) == 2)
        deploy(ctl.store, DeploymentSpec("digits", "digits_cnn", _publish(ctl, digits_artifacts.out_dir), replicas=1))
        wait_until("serving", lambda: f.serving("digits"), timeout=60)
        (host,) = f.serving("digits")
        # A silent partition: the link is cut and the broker sends no will (its keepalive is long).
        f.broker.disconnect(f"edgectl-agent-{host}", will=False)
        other = next(d for d in f.agents if d != host)
        wait_until("re-placed on the other device", lambda: any(
            p.device == other and p.state == "serving" for p in ctl.store.list_placements("digits")), timeout=60)
        assert any(e.kind == "offline" and "heartbeat" in e.message for e in ctl.store.list_events(limit=500))
    finally:
        f.stop()
        ctl.stop()


def test_metrics_and_status_over_http(fleet, digits_artifacts) -> None:
    import urllib.request

    from fleet.http_api import FleetHttp

    f, ctl = fleet
    f.start_agent("dev-0")
    wait_until("online", lambda: any(d.online for d in ctl.store.list_devices()))
    deploy(ctl.store, DeploymentSpec("digits", "digits_cnn", _publish(ctl, digits_artifacts.out_dir), replicas=1))
    wait_until("serving", lambda: _deployment(ctl, "digits")["running"] == 1, timeout=60)
    http = FleetHttp(ctl, "127.0.0.1", 0).start()
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{http.port}/metrics", timeout=5).read().decode()
        assert 'edgectl_devices{state="online"} 1' in text
        assert 'edgectl_deployment_replicas{deployment="digits",state="running"} 1' in text
        assert "edgectl_scheduling_decisions_total 1" in text
        st = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{http.port}/v1/status", timeout=5).read())
        assert st["deployments"][0]["running"] == 1
    finally:
        http.stop()


def test_sustained_overload_moves_a_replica_with_hysteresis(tmp_path: Path, digits_artifacts) -> None:
    from fleet.config import OverloadConfig
    from fleet.scheduler import DEFAULTS

    f = MemoryFleet(tmp_path, digits_artifacts.public_key)
    # The fake devices' CPU is what the test says: the scheduler's CPU filter (90 %) is back on.
    ctl = Controller(f.fleet_config(overload=OverloadConfig(cpu_percent=80, window_s=0.5, cooldown_s=60),
                                    scheduler=DEFAULTS),
                     transport=MemoryTransport(f.broker, "controller"))
    ctl.start()
    fake = MemoryTransport(f.broker, "fakes")
    fake.start()
    caps = {"arch": "x86_64", "isa": ["sse4.2", "avx", "avx2", "fma", "f16c"], "runtimes": {"onnxruntime": "1"},
            "memory_total_bytes": 8 << 30, "disk_free_bytes": 8 << 30}

    def telemetry(dev: str, cpu: float) -> None:
        fake.publish(wire.telemetry_topic(dev), wire.encode("telemetry", {
            "device": dev, "ts": 1.0, "dropped": 0, "models": {},
            "resources": {"cpu_percent": cpu, "memory_available_bytes": 6 << 30, "disk_free_bytes": 8 << 30}}))

    try:
        for dev in ("a", "b"):
            fake.publish(wire.state_topic(dev), wire.encode("state", {"device": dev, "online": True,
                                                                      "capabilities": caps}), retain=True)
            telemetry(dev, 10.0)
        wait_until("2 devices", lambda: len(ctl.store.list_devices()) == 2)
        deploy(ctl.store, DeploymentSpec("digits", "digits_cnn", _publish(ctl, digits_artifacts.out_dir), replicas=1))
        (first,) = wait_until("placed", lambda: [p.device for p in ctl.store.list_placements("digits")])
        other = "b" if first == "a" else "a"
        # A spike shorter than the window does nothing; a dip inside the hysteresis band does not reset it.
        telemetry(first, 95.0)
        time.sleep(0.2)
        telemetry(first, 75.0)  # below 80 but above 70: still "hot"
        time.sleep(0.1)
        assert [p.device for p in ctl.store.list_placements("digits")] == [first]
        deadline = time.monotonic() + 10
        while [p.device for p in ctl.store.list_placements("digits")] != [other]:
            assert time.monotonic() < deadline, ctl.store.list_placements("digits")
            telemetry(first, 95.0)
            time.sleep(0.1)
        assert any(e.kind == "moved" and first in e.message for e in ctl.store.list_events(limit=500))
    finally:
        fake.stop()
        f.stop()
        ctl.stop()


# --- report batching (no agents: the handlers and the flush called directly) -----------------

SHA_V1, SHA_OTHER = "1" * 64, "2" * 64


@pytest.fixture
def bare(tmp_path: Path) -> Iterator[Controller]:
    """A controller that is not started, with digits placed (pending) on dev-a and dev-b."""
    cfg = MemoryFleet(tmp_path, tmp_path / "key.pub").fleet_config()
    ctl = Controller(cfg, transport=MemoryTransport(MemoryBroker(), "controller"))
    manifest = {"target": {"name": "x86_64-avx2", "arch": "x86_64", "isa": ["avx2"]}, "variants": [
        {"file": "m.int8.onnx", "precision": "int8", "format": "onnx", "runtime": "onnxruntime"}]}
    variants = variants_from_manifest("digits", manifest, SHA_V1, 100)
    version = ctl.store.register_model("digits", variants, {"x86_64-avx2": manifest})
    ctl.store.create_deployment(DeploymentSpec("digits", "digits", version, replicas=2))
    for dev in ("dev-a", "dev-b"):
        ctl.store.upsert_device(Device(id=dev, arch="x86_64", online=True), {})
        ctl.store.bind(Placement("digits", dev, ctl.store.get_variants("digits", version)[0], since=1.0))
    yield ctl
    ctl.store.close()


def _report(ctl: Controller, dev: str, state: str, sha: str = SHA_V1, deployment: str = "digits") -> None:
    body = wire.report_message(dev, deployment, state, manifest_sha256=sha, generation=1, reason="why", ts=1.0)
    ctl._on_report(Message(wire.report_topic(dev), body))


def _states(ctl: Controller) -> dict[str, str]:
    return {p.device: p.state for p in ctl.store.list_placements("digits")}


def test_reports_are_queued_then_committed_in_arrival_order(bare: Controller) -> None:
    ctl = bare
    for state in ("downloading", "verifying", "serving"):
        _report(ctl, "dev-a", state)
    for state in ("serving", "failed"):
        _report(ctl, "dev-b", state)
    assert _states(ctl) == {"dev-a": "pending", "dev-b": "pending"}  # the handler wrote nothing
    assert not ctl.wake.is_set()
    ctl.flush_reports()
    assert _states(ctl) == {"dev-a": "serving", "dev-b": "failed"}  # each device's last report won
    assert ctl.wake.is_set()
    assert [e.kind for e in ctl.store.list_events(subject="digits")] == ["failed"]


def test_the_reconcile_loop_is_woken_after_the_commit(bare: Controller, tmp_path: Path) -> None:
    ctl = bare
    other = open_store(ctl.cfg.store_url)  # another connection: sees committed rows only
    seen: list[dict[str, str]] = []

    class Spy(threading.Event):
        def set(self) -> None:
            seen.append({p.device: p.state for p in other.list_placements("digits")})
            super().set()

    ctl.wake = Spy()
    _report(ctl, "dev-a", "serving")
    ctl.flush_reports()
    other.close()
    assert seen == [{"dev-a": "serving", "dev-b": "pending"}]


def test_reports_that_cannot_apply_are_dropped_without_a_wake(bare: Controller) -> None:
    ctl = bare
    _report(ctl, "dev-a", "serving", sha=SHA_OTHER)  # about an artifact no longer bound
    _report(ctl, "dev-a", "failed", deployment="gone")  # about a placement that is gone
    _report(ctl, "dev-b", "removed")  # nothing to record
    _report(ctl, "dev-b", "downloading")  # applies, but nothing for the loop to act on
    ctl.flush_reports()
    assert _states(ctl) == {"dev-a": "pending", "dev-b": "downloading"}
    assert not ctl.wake.is_set()
    assert ctl.store.list_events(subject="gone") == []


def test_a_batch_the_store_refuses_is_kept_for_the_next_flush(bare: Controller, monkeypatch) -> None:
    ctl = bare
    _report(ctl, "dev-b", "downloading")
    _report(ctl, "dev-a", "downloading")
    real = ctl.store.record_reports

    def locked(items):
        raise StoreUnavailable("locked")

    monkeypatch.setattr(ctl.store, "record_reports", locked)
    ctl.flush_reports()
    _report(ctl, "dev-a", "serving")
    monkeypatch.setattr(ctl.store, "record_reports", real)
    ctl.flush_reports()
    # Nothing lost, and the retried report did not land after the newer one.
    assert _states(ctl) == {"dev-a": "serving", "dev-b": "downloading"}
