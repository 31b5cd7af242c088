"""`edgectl up` end to end: a real broker (Mosquitto, or the embedded one), controller and agents in
this process, the bundled example deployed and answering; afterwards nothing of it may be left
running, and the store says what the fleet looked like when it stopped.

The example model is built once for the module (``prepare_model``: the same child processes
``run_up`` starts), so each run below starts from the cache, as a second `edgectl up` would.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import psutil
import pytest
from typer.testing import CliRunner

from edgectl import wire
from edgectl.cli import app
from edgectl.errors import UserError
from edgectl.transport.mqtt import MqttSettings, MqttTransport
from fleet.broker import BrokerMissing, EmbeddedBroker, accepts_connections
from fleet.config import load_fleet_config
from fleet.ops import status
from fleet.store import open_store
from fleet.up import UpOptions, UpReport, UpStatus, _Up, prepare_model, run_up


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("edgectl-up")
    built = prepare_model(path)
    assert not built.cached and (built.folder / "x86_64-avx2" / "manifest.json").is_file()
    return path


def _children() -> set[int]:
    # Compared with a snapshot: other suites' session brokers may be children of this process too.
    return {p.pid for p in psutil.Process().children(recursive=True)}


def _new_children(before: set[int]) -> list[str]:
    return [" ".join(p.cmdline()) for p in psutil.Process().children(recursive=True) if p.pid not in before]


def _leftover_threads(before: set[threading.Thread], timeout: float = 5.0) -> list[str]:
    # Per-connection HTTP threads end a moment after their socket is shut down: allow that moment.
    deadline = time.monotonic() + timeout
    while True:
        left = [t.name for t in threading.enumerate() if t not in before and t.is_alive()]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


def _assert_served(report: UpReport, devices: int) -> None:
    assert report.ok, report.to_dict()
    assert report.errors == (), report.errors
    assert len(report.devices) == devices and len({d.memory_budget_mb for d in report.devices}) == devices
    assert report.model is not None and report.model.cached and report.model.name == "digits_cnn"
    assert len(report.serving) >= 1 and report.first_serving_s is not None
    assert report.all_serving_s is not None and len(report.serving) == report.replicas
    assert report.requests.ok > 0 and report.requests.failed == 0
    assert report.requests.accuracy is not None and report.requests.accuracy > 0.8
    assert sum(report.requests.by_device.values()) == report.requests.ok


def _assert_store_truthful(report: UpReport) -> None:
    """The replicas stay where they served (the controller stopped before the devices, so it did
    not move them on the way out), every device is offline, and the run's end is logged."""
    assert report.fleet_config is not None
    store = open_store(load_fleet_config(report.fleet_config).store_url)
    try:
        devices = status(store)["devices"]
        placed = sorted(p.device for p in store.list_placements(report.deployment))
        events = store.list_events(limit=1000)
    finally:
        store.close()
    assert [d["id"] for d in devices] == [d.id for d in report.devices] and not any(d["online"] for d in devices)
    assert placed == sorted(report.serving), (placed, report.serving)
    assert [e.message for e in events if e.kind == "replaced"] == []
    assert events[-1].kind == "stopped", events[-1]


def _assert_nothing_left(report: UpReport, threads_before: set[threading.Thread], children_before: set[int]) -> None:
    assert _new_children(children_before) == []  # no mosquitto, no probe, no build
    assert _leftover_threads(threads_before) == []
    for d in report.devices:
        assert d.http_port is not None and not accepts_connections("127.0.0.1", d.http_port)
    if report.broker_url is not None:
        url = urlsplit(report.broker_url)
        assert url.hostname is not None and url.port is not None
        assert not accepts_connections(url.hostname, url.port)


@pytest.mark.mqtt
def test_up_runs_a_fleet_on_mosquitto_and_leaves_nothing_running(workdir: Path) -> None:
    before, children = set(threading.enumerate()), _children()
    seen: list[str] = []
    report = run_up(UpOptions(devices=3, duration=20, workdir=workdir), on_status=lambda st: seen.append(st.phase))
    print(json.dumps({k: v for k, v in report.to_dict().items() if k != "events"}, indent=1))
    assert report.broker == "mosquitto" and report.broker_url is not None
    assert report.replicas == 2 and not report.interrupted
    _assert_served(report, 3)
    assert report.timeline["devices_online"] <= report.timeline["deployed"] < report.first_serving_s
    assert {"starting", "serving", "stopped"} <= set(seen)
    _assert_nothing_left(report, before, children)
    _assert_store_truthful(report)  # the fleet's store stays behind for a look with the ordinary commands


def test_up_runs_a_fleet_on_the_embedded_broker_that_other_processes_reach(workdir: Path) -> None:
    before, children = set(threading.enumerate()), _children()
    states: list[str] = []

    def look_from_outside(st: UpStatus) -> None:
        # Another MQTT client (any process could be this one) sees the devices' retained states.
        if st.phase != "serving" or states or st.broker_url is None:
            return
        seen = threading.Event()
        t = MqttTransport(MqttSettings(url=st.broker_url, client_id="outsider"))
        t.subscribe(wire.state_topic("+"), lambda m: (states.append(m.topic), len(states) >= 3 and seen.set()))
        t.start()
        seen.wait(20)
        t.stop()

    report = run_up(UpOptions(devices=3, duration=20, workdir=workdir, broker="embedded"), on_status=look_from_outside)
    assert report.broker == "embedded" and report.broker_url is not None and report.notes == ()
    assert sorted(states) == [wire.state_topic(f"dev-0{i}") for i in (1, 2, 3)]
    _assert_served(report, 3)
    _assert_nothing_left(report, before, children)
    _assert_store_truthful(report)


@pytest.mark.mqtt
def test_cli_up_prints_a_json_summary(workdir: Path) -> None:
    before, children = set(threading.enumerate()), _children()
    result = CliRunner().invoke(app, ["up", "--devices", "2", "--duration", "20", "--json", "--workdir", str(workdir)])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["ok"] is True and doc["broker"] == "mosquitto" and doc["requests"]["ok"] > 0
    assert doc["accuracy"] > 0.8 and doc["first_serving_s"] is not None and doc["errors"] == []
    assert [d["id"] for d in doc["devices"]] == ["dev-01", "dev-02"]
    assert (workdir / "up.log").read_text()  # the library's logs went there, not to the terminal
    assert _new_children(children) == []
    assert _leftover_threads(before) == []


def test_up_on_the_memory_broker(workdir: Path) -> None:
    before, children = set(threading.enumerate()), _children()
    report = run_up(UpOptions(devices=2, duration=10, workdir=workdir, broker="memory"))
    assert report.broker == "memory" and report.broker_url is None
    _assert_served(report, 2)
    _assert_store_truthful(report)
    _assert_nothing_left(report, before, children)


def test_auto_falls_back_to_the_embedded_broker_without_mosquitto(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("fleet.broker.find_mosquitto", lambda: None)
    children = _children()
    up = _Up(UpOptions(devices=1, workdir=tmp_path, broker="auto"), None)
    up.prepare_dirs()
    up.start_broker()
    assert up.broker_kind == "embedded" and isinstance(up.broker, EmbeddedBroker) and up.memory is None
    assert up.broker_url is not None and up.broker_url == up.broker.url and up.broker.running
    assert any("embedded MQTT 5 broker" in e and "apt-get install mosquitto" in e for e in up.events), up.events
    assert len(up.notes) == 1 and "apt-get install mosquitto" in up.notes[0]
    config = load_fleet_config(up.write_fleet_config())
    assert config.broker_url == up.broker_url  # `edgectl fleet …` from another terminal reaches it
    up.stop()  # a half-started run stops too (and releases the workdir)
    assert not accepts_connections(up.broker.host, up.broker.port)
    # Asked for by name, a missing Mosquitto is an error that says how to install it.
    with pytest.raises(BrokerMissing, match="apt-get install mosquitto"):
        run_up(UpOptions(devices=1, workdir=tmp_path, broker="mosquitto"))
    assert _new_children(children) == []


def test_options_are_checked() -> None:
    with pytest.raises(UserError, match="--devices 0"):
        UpOptions(devices=0)
    with pytest.raises(UserError, match="--broker"):
        UpOptions(broker="emqx")
    assert [UpOptions(devices=n).replicas for n in (1, 2, 3, 4, 5, 10)] == [1, 2, 2, 3, 3, 3]
