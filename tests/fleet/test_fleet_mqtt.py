"""The whole fleet as real processes: Mosquitto, `edgectl fleet serve`, and agent daemons, with
real signed artifacts — place, fail over on kill -9 of an agent, roll out and roll back, and
kill -9 of the controller itself."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.verify import load_trusted_keys
from edgectl import wire
from edgectl.transport.mqtt import MqttSettings, MqttTransport
from fleet.artifacts import ArtifactStore
from fleet.model import DeploymentSpec
from fleet.ops import deploy, publish_dir, status
from fleet.store import open_store
from tests.edge_agent.agent_rig import AgentProcess
from tests.fleet.fleet_rig import make_version, wait_until
from tests.mosquitto import free_port

pytestmark = pytest.mark.mqtt


class ControllerProcess:
    def __init__(self, tmp_path: Path, broker_url: str, public_key: Path) -> None:
        self.dir = tmp_path / "controller"
        self.dir.mkdir()
        self.http_port = free_port()
        self.config = self.dir / "fleet.toml"
        self.config.write_text(
            f'broker_url = "{broker_url}"\nstore_url = "fleet.db"\nartifact_dir = "artifacts"\n'
            f'trusted_keys = ["{public_key}"]\nhttp_port = {self.http_port}\n'
            "heartbeat_timeout_s = 5\nreconcile_interval_s = 0.2\n"
            # The agents all report this host's CPU, which other work loads: with the default
            # 90 % filter a busy machine left no device schedulable and the failover timed out.
            "[scheduler]\nmax_cpu_percent = 100\n[overload]\ncpu_percent = 100\n"
        )
        self.log = self.dir / "controller.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "edgectl", "fleet", "serve", "-c", str(self.config)],
                                         stdout=log, stderr=subprocess.STDOUT)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(20)


@pytest.fixture
def world(tmp_path: Path, mosquitto, digits_artifacts) -> Iterator[tuple[ControllerProcess, list[AgentProcess]]]:
    ctl = ControllerProcess(tmp_path, mosquitto.url, digits_artifacts.public_key)
    ctl.start()
    agents = [AgentProcess(tmp_path, f"dev-{i}", mosquitto.url, digits_artifacts.public_key).start() for i in range(3)]
    yield ctl, agents
    for a in agents:
        a.terminate()
    ctl.stop()
    if os.environ.get("EDGECTL_TEST_LOGS"):
        print(ctl.log.read_text()[-5000:])


def _store(ctl: ControllerProcess):
    return open_store(str(ctl.dir / "fleet.db"))


def _dep(store, name: str = "digits") -> dict:
    return next((d for d in status(store)["deployments"] if d["name"] == name), {})


def _serving_devices(store, name: str = "digits") -> set[str]:
    return {p.device for p in store.list_placements(name) if p.state == "serving"}


def test_place_fail_over_roll_out_roll_back_and_survive_controller_kill9(world, digits_artifacts, tmp_path,
                                                                          mosquitto) -> None:
    ctl, agents = world
    wait_until("the controller's store", lambda: (ctl.dir / "fleet.db").exists(), timeout=30)
    store = _store(ctl)
    artifacts = ArtifactStore(ctl.dir / "artifacts")
    keys = load_trusted_keys((digits_artifacts.public_key,))
    wait_until("3 devices online", lambda: sum(d.online for d in store.list_devices()) == 3, timeout=60)
    v1 = publish_dir(store, artifacts, digits_artifacts.out_dir, keys).version
    deploy(store, DeploymentSpec("digits", "digits_cnn", v1, replicas=2))
    wait_until("2 replicas serving", lambda: _dep(store).get("running") == 2, timeout=60)
    first = _serving_devices(store)
    for a in agents:
        if a.device_id in first:
            a.wait_http()
            assert a.predict(digits_artifacts.sample(1))[0] == 200

    # kill -9 a serving agent: the will marks it offline and its replica moves to the spare device.
    victim = next(a for a in agents if a.device_id in first)
    t0 = time.monotonic()
    victim.kill9()
    wait_until("failover", lambda: len(_serving_devices(store)) == 2 and victim.device_id not in
               _serving_devices(store), timeout=60)
    failover_s = time.monotonic() - t0
    spare = next(a for a in agents if a.device_id not in first)
    spare.wait_http()
    assert spare.predict(digits_artifacts.sample(1))[0] == 200
    print(f"failover after kill -9: {failover_s:.2f} s")

    # kill -9 the controller: nothing lost, nothing duplicated, the same desired state re-published.
    watcher = MqttTransport(MqttSettings(url=mosquitto.url, client_id="desired-watcher"))
    desired: dict[str, list] = {}
    watcher.subscribe(f"{wire.PREFIX}/devices/+/desired",
                      lambda m: desired.setdefault(m.topic, []).append(json.loads(m.payload)))
    watcher.start()
    assert watcher.wait_connected(10)
    wait_until("retained desired states", lambda: len(desired) >= 2, timeout=10)
    before = {t: v[-1] for t, v in desired.items()}
    placements_before = sorted((p.device, p.variant.key) for p in store.list_placements("digits"))
    ctl.kill9()
    ctl.start()
    time.sleep(3)  # several reconcile passes
    assert sorted((p.device, p.variant.key) for p in store.list_placements("digits")) == placements_before
    after = {t: v[-1] for t, v in desired.items()}
    assert after == before  # re-published (or not) with the same generation and content
    assert _dep(store)["running"] == 2
    watcher.stop()

    # Roll out v2 (good), then v3 (its self-test fails everywhere): v3 is rolled back to v2.
    v2 = publish_dir(store, artifacts, make_version(digits_artifacts.out_dir, tmp_path / "v2",
                                                    digits_artifacts.private_key, tag="v2"), keys).version
    deploy(store, DeploymentSpec("digits", "digits_cnn", v2, replicas=2, canary_percent=50))
    wait_until("v2 everywhere", lambda: all(p.variant.version == v2 and p.state == "serving"
                                            for p in store.list_placements("digits"))
               and len(store.list_placements("digits")) == 2, timeout=90)
    v3 = publish_dir(store, artifacts, make_version(digits_artifacts.out_dir, tmp_path / "v3",
                                                    digits_artifacts.private_key, tag="v3", break_selftest=True),
                     keys).version
    deploy(store, DeploymentSpec("digits", "digits_cnn", v3, replicas=2, canary_percent=50))
    wait_until("rolled back", lambda: any(r.state == "rolled_back" for r in store.list_rollouts("digits")),
               timeout=90)
    wait_until("v2 serving again", lambda: all(p.variant.version == v2 and p.state == "serving"
                                               for p in store.list_placements("digits"))
               and _dep(store)["running"] == 2, timeout=90)
    assert store.get_deployment("digits").version == v2
    events = [e.kind for e in store.list_events(limit=1000)]
    for kind in ("placed", "offline", "replaced", "rollout", "rollout_done", "rolled_back"):
        assert kind in events, (kind, events)
