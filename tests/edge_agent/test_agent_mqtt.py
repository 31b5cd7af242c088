"""The agent daemon as a real process against a real Mosquitto, with real artifacts: install and
serve, then the faults — kill -9 mid-install, the broker stopping mid-transfer, damaged staged
files, and a restart with no broker at all."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edgectl import wire
from edgectl.transport.mqtt import MqttSettings, MqttTransport
from fleet.artifacts import ArtifactStore
from tests.edge_agent.agent_rig import AgentProcess, ControllerSide, SlowChunkServer, deployment, install_digits

pytestmark = pytest.mark.mqtt
X86 = "x86_64-avx2"


@pytest.fixture
def controller(mosquitto, tmp_path: Path) -> Iterator[ControllerSide]:
    t = MqttTransport(MqttSettings(url=mosquitto.url, client_id=f"controller-{tmp_path.name[-20:]}"))
    ctl = ControllerSide(t, ArtifactStore(tmp_path / "store"), "dev-1", server_class=SlowChunkServer)
    ctl.server.delay_s = 0.0  # type: ignore[attr-defined]
    t.start()
    assert t.wait_connected(10)
    yield ctl
    t.stop()


@pytest.fixture
def agent(mosquitto, tmp_path: Path, digits_artifacts) -> Iterator[AgentProcess]:
    # 4 KB chunks, one in flight: the digits artifacts take dozens of chunks, so faults land mid-transfer.
    proc = AgentProcess(tmp_path, "dev-1", mosquitto.url, digits_artifacts.public_key, chunk_kb=4, window=1)
    yield proc
    proc.terminate()


def _slow(ctl: ControllerSide, delay: float) -> None:
    ctl.server.delay_s = delay  # type: ignore[attr-defined]


def test_installs_over_mosquitto_and_serves_http_and_mqtt(controller, agent, digits_artifacts, mosquitto) -> None:
    a = digits_artifacts
    install_digits(controller, agent, a, X86)
    status, body = agent.predict(a.sample(2))
    assert status == 200 and np.asarray(body["outputs"]["output"]).shape == (2, 10)
    status, models = agent.http("GET", "/v1/models")
    assert status == 200 and models["models"][0]["name"] == "digits"
    # MQTT request/response through the broker.
    client = MqttTransport(MqttSettings(url=mosquitto.url, client_id="infer-client"))
    replies: list = []
    client.subscribe("clients/infer-client/replies", replies.append)
    client.start()
    assert client.wait_connected(10)
    body_json = json.dumps({"inputs": {k: v.tolist() for k, v in a.sample(1).items()}}).encode()
    client.publish(wire.infer_topic("dev-1", "digits"), body_json, response_topic="clients/infer-client/replies",
                   correlation_data=b"42", content_type="application/json")
    deadline = time.monotonic() + 10
    while not replies:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert replies[0].correlation_data == b"42"
    assert np.asarray(json.loads(replies[0].payload)["outputs"]["output"]).shape == (1, 10)
    client.stop()
    # Telemetry arrives on its interval with the model's request counts.
    deadline = time.monotonic() + 10
    while not any(t["models"].get("digits", {}).get("requests", 0) >= 2 for t in controller.telemetry):
        assert time.monotonic() < deadline, controller.telemetry[-1:]
        time.sleep(0.1)
    # A clean stop publishes "offline" on the retained state topic.
    assert agent.terminate() == 0
    deadline = time.monotonic() + 10
    while not (controller.states and controller.states[-1]["online"] is False):
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_kill9_mid_install_comes_back_serving_then_resumes(controller, agent, digits_artifacts) -> None:
    a = digits_artifacts
    ref = controller.publish(a.folder(X86))
    agent.start()
    controller.desire(deployment("digits", ref, a.variant(X86, "int8")["file"]))
    controller.wait_for("digits", "serving")
    _slow(controller, 0.05)  # the fp32 model is ~25 chunks: about a second and a half
    fp32 = a.variant(X86, "fp32")["file"]
    controller.desire(deployment("digits", ref, fp32))
    controller.wait_for("digits", "downloading")
    time.sleep(0.6)
    agent.kill9()
    parts = list((agent.data_dir / "partial").glob("*.part"))
    assert parts and 0 < parts[0].stat().st_size < (a.folder(X86) / fp32).stat().st_size
    # The will marks the device offline at once.
    deadline = time.monotonic() + 15
    while not (controller.states and controller.states[-1]["online"] is False):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    _slow(controller, 0.0)
    agent.start()
    agent.wait_http()
    status, _body = agent.predict(a.sample(1))  # the last good version (int8) serves at once
    assert status == 200
    controller.wait_for("digits", "loaded")  # the fp32 install, finished after the restart
    controller.wait_for("digits", "serving")
    assert "resuming" in agent.log.read_text()
    status, info = agent.http("GET", "/v1/models/digits")
    assert status == 200 and info["meta"]["precision"] == "fp32"


def test_broker_stopped_mid_transfer_the_install_resumes(controller, agent, digits_artifacts, mosquitto) -> None:
    a = digits_artifacts
    ref = controller.publish(a.folder(X86))
    _slow(controller, 0.03)
    agent.start()
    controller.desire(deployment("digits", ref, a.variant(X86, "fp32")["file"]))
    controller.wait_for("digits", "downloading")
    time.sleep(0.3)
    mosquitto.stop()
    time.sleep(1.5)
    mosquitto.start()
    controller.wait_for("digits", "serving", timeout=90)
    agent.wait_http()
    assert agent.predict(a.sample(1))[0] == 200
    assert "failed" not in controller.trail("digits")


def test_damaged_staged_and_partial_files_are_not_trusted(controller, agent, digits_artifacts) -> None:
    a = digits_artifacts
    ref = controller.publish(a.folder(X86))
    _slow(controller, 0.2)  # ~7 chunks of the int8 model: well over a second, so the kill lands mid-transfer
    agent.start()
    int8 = a.variant(X86, "int8")["file"]
    controller.desire(deployment("digits", ref, int8))
    controller.wait_for("digits", "downloading")
    time.sleep(0.5)
    agent.kill9()
    assert "serving" not in controller.trail("digits")
    parts = list((agent.data_dir / "partial").glob("*.part"))
    assert parts  # killed mid-transfer: a partial download is there to damage
    # Damage everything a crash could have left behind: the partial download and any staging.
    for part in parts:
        part.write_bytes(b"\xff" * part.stat().st_size)
    stray = agent.data_dir / "staging" / "leftover.x"
    stray.mkdir(parents=True)
    (stray / int8).write_bytes(b"half a model")
    _slow(controller, 0.0)
    agent.start()
    controller.wait_for("digits", "serving")
    assert not stray.exists()
    agent.wait_http()
    assert agent.predict(a.sample(1))[0] == 200
    installed = agent.data_dir / "artifacts" / f"{ref.manifest_sha256}.{int8}" / int8
    assert installed.read_bytes() == (a.folder(X86) / int8).read_bytes()


def test_restart_with_no_broker_serves_the_last_good_model(controller, agent, digits_artifacts, mosquitto) -> None:
    a = digits_artifacts
    ref = controller.publish(a.folder(X86))
    agent.start()
    controller.desire(deployment("digits", ref, a.variant(X86, "int8")["file"]))
    controller.wait_for("digits", "serving")
    agent.kill9()
    mosquitto.kill()
    agent.start()
    agent.wait_http()
    status, body = agent.predict(a.sample(1))
    assert status == 200 and np.asarray(body["outputs"]["output"]).shape == (1, 10)
    status, health = agent.http("GET", "/healthz")
    assert health["connected"] is False
    # The broker comes back: the agent reconnects and reports in, with nothing to reinstall.
    mosquitto.start()
    deadline = time.monotonic() + 30
    while not any(s["online"] for s in controller.states[-3:]):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert controller.trail("digits").count("downloading") == 1
