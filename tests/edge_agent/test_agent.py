"""The whole agent on the in-memory broker, with real artifacts from `edgectl compile`, real
onnxruntime/LiteRT, real probe processes and a real data dir."""

from __future__ import annotations

import itertools
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edge_agent.config import AgentConfig, HttpConfig
from edge_agent.daemon import Agent, state_message
from edgectl import wire
from edgectl.signing import write_keypair
from edgectl.transport.base import Will
from edgectl.transport.memory import MemoryBroker, MemoryTransport
from fleet.artifacts import ArtifactStore
from tests.edge_agent.agent_rig import ControllerSide, deployment

X86 = "x86_64-avx2"


class Rig:
    def __init__(self, tmp_path: Path, artifacts, *, trusted: Path | None = None, **cfg: object) -> None:
        self.tmp_path = tmp_path
        self.artifacts = artifacts
        self.broker = MemoryBroker()
        ctl_t = MemoryTransport(self.broker, "controller")
        self.ctl = ControllerSide(ctl_t, ArtifactStore(tmp_path / "store"), "dev-1")
        ctl_t.start()
        self.cfg = AgentConfig(device_id="dev-1", data_dir=tmp_path / "agent", trusted_keys=(trusted or artifacts.public_key,),
                               http=HttpConfig(enabled=False), telemetry_interval_s=0.2, tick_s=0.1, **cfg)  # type: ignore[arg-type]
        self.agent: Agent | None = None

    def start_agent(self) -> Agent:
        will = Will(wire.state_topic("dev-1"), state_message("dev-1", False, None))
        self.agent = Agent(self.cfg, transport=MemoryTransport(self.broker, "agent-dev-1", will=will))
        self.agent.start()
        return self.agent

    def stop_agent(self) -> None:
        if self.agent is not None:
            self.agent.stop()
            self.agent = None


@pytest.fixture
def rig(tmp_path: Path, digits_artifacts) -> Iterator[Rig]:
    r = Rig(tmp_path, digits_artifacts)
    yield r
    r.stop_agent()


def _eventually(read, ok, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while True:
        value = read()
        if ok(value):
            return value
        assert time.monotonic() < deadline, value
        time.sleep(0.02)


def _input(artifacts) -> dict[str, np.ndarray]:
    return artifacts.sample(1)


def test_installs_serves_and_reports_every_step(rig: Rig) -> None:
    a = rig.artifacts
    ref = rig.ctl.publish(a.folder(X86))
    agent = rig.start_agent()
    rig.ctl.desire(deployment("digits", ref, a.variant(X86, "int8")["file"]))
    rig.ctl.wait_for("digits", "serving")
    assert rig.ctl.trail("digits") == ["downloading", "verifying", "installing", "loaded", "serving"]
    out = agent.server.predict("digits", _input(a))
    expected = np.load(a.selftest_npz(X86))
    assert out["output"].shape == (1, 10)
    assert np.argmax(out["output"]) == np.argmax(expected["output.int8.output"][0])
    state = _eventually(lambda: json.loads((rig.cfg.data_dir / "state.json").read_text()),
                        lambda s: s["generation"] == 1)  # saved once every deployment is done
    assert state["deployments"]["digits"]["current"]["manifest_sha256"] == ref.manifest_sha256
    # Only the served file, the self-test and the manifest are on the device.
    (installed,) = (rig.cfg.data_dir / "artifacts").iterdir()
    assert sorted(p.name for p in installed.iterdir()) == sorted(
        ["manifest.json", "selftest.npz", a.variant(X86, "int8")["file"]])
    # The retained state says online with capabilities; telemetry carries the model's metrics.
    assert any(s["online"] and s["capabilities"]["arch"] == "x86_64" for s in rig.ctl.states)
    deadline = time.monotonic() + 10
    while not any("digits" in t["models"] and t["models"]["digits"]["requests"] for t in rig.ctl.telemetry):
        assert time.monotonic() < deadline, rig.ctl.telemetry[-1:]
        time.sleep(0.05)


def test_tflite_variant_on_litert(tmp_path: Path, digits_artifacts) -> None:
    # The arm64 artifact is refused on this x86 host (wrong arch); the fit check is what stops it.
    r = Rig(tmp_path, digits_artifacts)
    try:
        a = digits_artifacts
        ref = r.ctl.publish(a.folder("arm64-cortex-a72"))
        r.start_agent()
        r.ctl.desire(deployment("digits", ref, a.variant("arm64-cortex-a72", "tflite-fp32")["file"]))
        rep = r.ctl.wait_for("digits", "failed")
        assert "built for aarch64, this device is x86_64" in rep["reason"]
    finally:
        r.stop_agent()


def test_mqtt_inference_round_trip(rig: Rig) -> None:
    a = rig.artifacts
    ref = rig.ctl.publish(a.folder(X86))
    rig.start_agent()
    rig.ctl.desire(deployment("digits", ref, a.variant(X86, "fp32")["file"]))
    rig.ctl.wait_for("digits", "serving")
    got: list = []
    client = MemoryTransport(rig.broker, "client")
    client.subscribe("clients/c1/replies", got.append)
    client.start()
    body = json.dumps({"inputs": {k: v.tolist() for k, v in _input(a).items()}}).encode()
    client.publish(wire.infer_topic("dev-1", "digits"), body, response_topic="clients/c1/replies",
                   correlation_data=b"req-1", content_type="application/json")
    client.publish(wire.infer_topic("dev-1", "nope"), body, response_topic="clients/c1/replies",
                   correlation_data=b"req-2", content_type="application/json")
    deadline = time.monotonic() + 10
    while len(got) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    by_id = {m.correlation_data: json.loads(m.payload) for m in got}
    assert np.asarray(by_id[b"req-1"]["outputs"]["output"]).shape == (1, 10)
    assert "error" in by_id[b"req-2"]
    client.stop()


def test_untrusted_signature_is_refused_and_nothing_installed(tmp_path: Path, digits_artifacts) -> None:
    other_pub = write_keypair(tmp_path / "other.key")
    r = Rig(tmp_path, digits_artifacts, trusted=other_pub)
    try:
        ref = r.ctl.publish(digits_artifacts.folder(X86))
        r.start_agent()
        r.ctl.desire(deployment("digits", ref, digits_artifacts.variant(X86, "int8")["file"]))
        rep = r.ctl.wait_for("digits", "failed")
        assert "does not trust" in rep["reason"]
        assert not list((r.cfg.data_dir / "artifacts").iterdir())
        assert r.agent is not None and "digits" not in r.agent.server
    finally:
        r.stop_agent()


def test_a_tampered_model_is_refused_and_the_old_version_keeps_serving(rig: Rig, tmp_path: Path) -> None:
    a = rig.artifacts
    ref = rig.ctl.publish(a.folder(X86))
    agent = rig.start_agent()
    rig.ctl.desire(deployment("digits", ref, a.variant(X86, "int8")["file"]))
    rig.ctl.wait_for("digits", "serving")
    # A second artifact whose fp32 file was swapped in the store after publishing.
    ref2 = rig.ctl.publish(a.folder(X86))
    fp32 = a.variant(X86, "fp32")["file"]
    blob = rig.ctl.store.path(ref2.files[fp32])
    blob.chmod(0o644)
    blob.write_bytes(blob.read_bytes()[:-10] + b"0123456789")
    rig.ctl.desire(deployment("digits", ref2, fp32))
    rep = rig.ctl.wait_for("digits", "failed")
    assert "expected" in rep["reason"] and "retrying" in rep["reason"]
    assert agent.server.version("digits") == ref.manifest_sha256[:12]
    assert agent.server.predict("digits", _input(a))["output"].shape == (1, 10)


def test_regression_guard_rolls_back_to_the_previous_version(rig: Rig) -> None:
    a = rig.artifacts
    ref = rig.ctl.publish(a.folder(X86))
    agent = rig.start_agent()
    rig.ctl.desire(deployment("digits", ref, a.variant(X86, "int8")["file"]))
    rig.ctl.wait_for("digits", "serving")
    x = _input(a)
    for _ in range(30):
        agent.server.predict("digits", x)
    # A guard no new version can pass: p95 must be under 1 % of the old one's.
    rig.ctl.desire(deployment("digits", ref, a.variant(X86, "fp32")["file"], max_p95_ratio=0.01,
                              min_requests=10, probation_s=60))
    rig.ctl.wait_for("digits", "serving")
    for _ in range(30):
        agent.server.predict("digits", x)
    rep = rig.ctl.wait_for("digits", "rolled_back")
    assert "p95" in rep["reason"]
    assert agent.server.version("digits") == ref.manifest_sha256[:12]
    state = json.loads((rig.cfg.data_dir / "state.json").read_text())["deployments"]["digits"]
    assert state["current"]["variant"] == a.variant(X86, "int8")["file"]
    assert any(a.variant(X86, "fp32")["file"] in k for k in state["failed"])
    # The bad version is not retried while the desired state still names it.
    time.sleep(0.5)
    assert rig.ctl.trail("digits").count("downloading") == 2  # int8, then fp32 once


def test_restart_serves_from_disk_without_the_network(rig: Rig) -> None:
    a = rig.artifacts
    ref = rig.ctl.publish(a.folder(X86))
    rig.start_agent()
    rig.ctl.desire(deployment("digits", ref, a.variant(X86, "int8")["file"]))
    rig.ctl.wait_for("digits", "serving")
    rig.stop_agent()
    # A new agent on the same data dir, with no broker behind its transport at all.
    cut_off = Agent(rig.cfg, transport=MemoryTransport(MemoryBroker(), "agent-dev-1"))
    try:
        cut_off.reconciler.restore()
        assert cut_off.server.predict("digits", _input(a))["output"].shape == (1, 10)
    finally:
        cut_off.server.close()


def test_restore_falls_back_to_the_previous_version_when_the_current_is_damaged(rig: Rig) -> None:
    a = rig.artifacts
    ref = rig.ctl.publish(a.folder(X86))
    rig.start_agent()
    rig.ctl.desire(deployment("digits", ref, a.variant(X86, "int8")["file"]))
    rig.ctl.wait_for("digits", "serving")
    fp32 = a.variant(X86, "fp32")["file"]
    rig.ctl.desire(deployment("digits", ref, fp32))
    rig.ctl.wait_for("digits", "serving")
    rig.stop_agent()
    damaged = rig.cfg.data_dir / "artifacts" / f"{ref.manifest_sha256}.{fp32}" / fp32
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])  # truncated on disk
    agent = Agent(rig.cfg, transport=MemoryTransport(MemoryBroker(), "agent-dev-1"))
    try:
        agent.reconciler.restore()
        assert agent.server.version("digits") == ref.manifest_sha256[:12]
        assert agent.server.predict("digits", _input(a))["output"].shape == (1, 10)
        cur = agent.reconciler.state.deployments["digits"].current
        assert cur is not None and cur.variant == a.variant(X86, "int8")["file"]
    finally:
        agent.server.close()


def test_removal_unloads_and_collects_files(rig: Rig) -> None:
    a = rig.artifacts
    ref = rig.ctl.publish(a.folder(X86))
    agent = rig.start_agent()
    rig.ctl.desire(deployment("digits", ref, a.variant(X86, "int8")["file"]))
    rig.ctl.wait_for("digits", "serving")
    rig.ctl.desire()
    rig.ctl.wait_for("digits", "removed")
    assert "digits" not in agent.server
    assert not list((rig.cfg.data_dir / "artifacts").iterdir())


def test_memory_budget_refuses_a_model_that_does_not_fit(tmp_path: Path, digits_artifacts) -> None:
    r = Rig(tmp_path, digits_artifacts, memory_budget_bytes=1 << 10)
    try:
        ref = r.ctl.publish(digits_artifacts.folder(X86))
        agent = r.start_agent()
        r.ctl.desire(deployment("digits", ref, digits_artifacts.variant(X86, "int8")["file"]))
        rep = r.ctl.wait_for("digits", "failed")
        assert "memory budget" in rep["reason"]
        assert "digits" not in agent.server
    finally:
        r.stop_agent()


def test_bad_and_stale_desired_states_are_dropped(rig: Rig) -> None:
    a = rig.artifacts
    ref = rig.ctl.publish(a.folder(X86))
    agent = rig.start_agent()
    rig.ctl.desire(deployment("digits", ref, a.variant(X86, "int8")["file"]), generation=5)
    rig.ctl.wait_for("digits", "serving")
    for junk in (b"\x00garbage", b'{"v": 9}', wire.encode("desired", {"generation": 6, "deployments": [{"name": "../x"}]})):
        rig.ctl.transport.publish(wire.desired_topic("dev-1"), junk, retain=True)
    rig.ctl.desire(generation=4)  # older than what the agent applied: ignored
    assert rig.broker.drain(5)
    time.sleep(0.3)
    assert agent.dropped_messages == 3
    assert "digits" in agent.server and "removed" not in rig.ctl.trail("digits")


def test_nothing_is_written_outside_the_data_dir(rig: Rig, tmp_path: Path) -> None:
    a = rig.artifacts
    before = {p for p in tmp_path.rglob("*") if "agent" not in p.parts}
    ref = rig.ctl.publish(a.folder(X86))
    rig.start_agent()
    rig.ctl.desire(deployment("digits", ref, a.variant(X86, "int8")["file"]))
    rig.ctl.wait_for("digits", "serving")
    rig.stop_agent()
    after = {p for p in tmp_path.rglob("*") if "agent" not in p.parts}
    assert {p for p in after - before if "store" not in p.parts} == set()
    shutil.rmtree(rig.cfg.data_dir)


def test_a_model_that_crashes_its_runtime_is_refused_and_the_agent_lives_on(rig: Rig, monkeypatch) -> None:
    a = rig.artifacts
    ref = rig.ctl.publish(a.folder(X86))
    agent = rig.start_agent()
    rig.ctl.desire(deployment("digits", ref, a.variant(X86, "int8")["file"]))
    rig.ctl.wait_for("digits", "serving")
    monkeypatch.setenv("EDGECTL_PROBE_CRASH", "1")  # the probe child aborts after loading
    rig.ctl.desire(deployment("digits", ref, a.variant(X86, "fp32")["file"]))
    rep = rig.ctl.wait_for("digits", "failed")
    assert "crashed" in rep["reason"] and "SIGABRT" in rep["reason"]
    assert agent.server.version("digits") == ref.manifest_sha256[:12]
    assert agent.server.predict("digits", _input(a))["output"].shape == (1, 10)


def test_telemetry_is_buffered_while_offline_and_flushed_on_reconnect(rig: Rig) -> None:
    rig.start_agent()
    deadline = time.monotonic() + 10
    while not rig.ctl.telemetry:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    rig.broker.disconnect("agent-dev-1", will=False)
    time.sleep(1.5)  # ~7 intervals of 0.2 s offline
    cut_at = time.time()
    seen_before = len(rig.ctl.telemetry)
    rig.broker.reconnect("agent-dev-1")
    deadline = time.monotonic() + 10
    while not any(t["ts"] > cut_at for t in rig.ctl.telemetry):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert rig.broker.drain(5)
    stamps = [t["ts"] for t in rig.ctl.telemetry]
    # Nothing lost: the buffered messages arrive, oldest first, and there is no gap.
    assert len(stamps) - seen_before >= 5
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    assert max(gaps) < 1.0 and stamps == sorted(stamps)
    assert rig.ctl.telemetry[-1]["dropped"] == 0
