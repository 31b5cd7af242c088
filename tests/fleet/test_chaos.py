"""`edgectl up --chaos`: every fault against a real fleet (Mosquitto, or for the broker restart the
embedded broker; the controller as a child process, in-process agents behind their own TCP
proxies), the report's invariants, and the exit code when one fails.

One fleet runs every fault once (``slow``: about a minute and a half); the everyday tests run one
fault each through the CLI. The example model is built once for the module.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import psutil
import pytest
from typer.testing import CliRunner

from edge_agent.verify import load_trusted_key_bytes
from edgectl.cli import app
from edgectl.errors import UserError
from fleet.chaos import FAULTS, ChaosOptions, check_installs, parse_chaos
from fleet.up import UpOptions, UpReport, prepare_model, run_up


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("edgectl-chaos")
    prepare_model(path)
    return path


def _children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


# --- the schedule ------------------------------------------------------------------------------

def test_schedules_are_parsed_and_seeded() -> None:
    assert parse_chaos("kill-device, cut-link", 0) == ("kill-device", "cut-link")
    assert sorted(parse_chaos("all", 3)) == sorted(FAULTS)
    assert parse_chaos("random:6", 7) == parse_chaos("random:6", 7)  # a seed replays the same schedule
    assert len(parse_chaos("random:6", 7)) == 6 and set(parse_chaos("random:30", 1)) <= set(FAULTS)
    assert parse_chaos("random:30", 1) != parse_chaos("random:30", 2)
    for bad in ("", "kill-all", "random:x", "random:0"):
        with pytest.raises(UserError, match="--chaos"):
            parse_chaos(bad, 0)
    with pytest.raises(UserError, match="needs a TCP broker"):
        UpOptions(broker="memory", chaos=ChaosOptions(("kill-device",)))


# --- one fault per run, through the CLI ----------------------------------------------------------

@pytest.mark.mqtt
@pytest.mark.parametrize(("fault", "broker"), [("kill-device", "mosquitto"), ("controller-restart", "mosquitto"),
                                               ("broker-restart", "embedded")])
def test_cli_injects_one_fault_and_reports_it(workdir: Path, fault: str, broker: str) -> None:
    # The embedded broker keeps sessions and retained messages in memory: its kill -9 loses them
    # all, and the fleet must still come back (agents re-announce, the controller re-publishes).
    children = _children()
    result = CliRunner().invoke(app, ["up", "--devices", "3", "--chaos", fault, "--fault-seconds", "2", "--json",
                                      "--broker", broker, "--workdir", str(workdir)])
    doc = json.loads(result.stdout)
    assert result.exit_code == 0, json.dumps(doc["chaos"], indent=1)
    assert doc["broker"] == broker
    chaos = doc["chaos"]
    assert chaos["ok"] and chaos["schedule"] == [fault] and len(chaos["faults"]) == 1
    f = chaos["faults"][0]
    assert f["fault"] == fault and f["ok"] and f["recovered_s"] is not None and f["recovered_s"] > 0
    assert {i["name"].split(" ")[0] for i in chaos["invariants"]} == {"every", "no"}
    assert all(i["held"] for i in chaos["invariants"]) and len(chaos["invariants"]) == 4
    if fault == "controller-restart":
        pids = [int(w) for w in f["effect"].replace(",", " ").split() if w.isdigit()]
        assert len(pids) == 2 and pids[0] != pids[1], f["effect"]  # a new process on the same store
    assert _children() - children == set()  # the broker, the controller and every probe are gone


@pytest.mark.mqtt
def test_cli_exits_non_zero_when_an_invariant_fails(workdir: Path) -> None:
    # A recovery timeout no fleet can meet: the controller is only back once a device's heartbeat
    # (every 2 s) reaches the new process.
    result = CliRunner().invoke(app, ["up", "--devices", "2", "--chaos", "controller-restart", "--fault-seconds",
                                      "1", "--recovery-timeout", "0.001", "--json", "--workdir", str(workdir)])
    assert result.exit_code == 1, result.output
    doc = json.loads(result.stdout)
    held = {i["name"].split(" ")[0] + " " + i["name"].split(" ")[1]: i["held"] for i in doc["chaos"]["invariants"]}
    assert held["every deployment"] is False and doc["chaos"]["faults"][0]["recovered_s"] is None
    assert doc["ok"] is False


# --- every fault on one fleet --------------------------------------------------------------------

@pytest.fixture(scope="module")
def chaos_run(workdir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[UpReport, Path]:
    options = ChaosOptions(FAULTS, seed=1, fault_s=3.0, recovery_timeout_s=60.0)
    report = run_up(UpOptions(devices=5, workdir=workdir, seed=1, chaos=options))
    assert report.chaos is not None
    print("\n".join(report.chaos.lines()))
    # The devices' data dirs, kept aside: a later run in this workdir replaces run/.
    kept = tmp_path_factory.mktemp("chaos-devices")
    shutil.copytree(workdir / "run" / "devices", kept / "devices")
    return report, kept / "devices"


@pytest.mark.mqtt
@pytest.mark.slow
@pytest.mark.parametrize("fault", FAULTS)
def test_the_fleet_recovers_from(chaos_run: tuple[UpReport, Path], fault: str) -> None:
    report, _ = chaos_run
    assert report.chaos is not None
    [r] = [f for f in report.chaos.faults if f.fault == fault]
    assert r.error is None and r.took_effect and r.recovered_s is not None, r
    if fault in ("kill-device", "cut-link"):
        assert r.target.startswith("dev-") and "offline after" in r.effect
    elif fault == "corrupt-chunk":
        assert int(r.effect.split()[0]) > 0  # payloads were damaged, and still nothing bad installed
    elif fault == "disk-full":
        assert "refused cleanly" in r.effect and "free disk space" in r.effect
    elif fault == "slow-link":
        assert "replica moved to dev-" in r.effect


@pytest.mark.mqtt
@pytest.mark.slow
def test_every_invariant_held_after_every_fault(chaos_run: tuple[UpReport, Path]) -> None:
    report, _ = chaos_run
    assert report.chaos is not None and report.ok, "\n".join(report.chaos.lines())
    assert [f.fault for f in report.chaos.faults] == list(report.chaos.schedule)
    assert sorted(report.chaos.schedule) == sorted(FAULTS)
    assert report.requests.correct > 0


@pytest.mark.mqtt
@pytest.mark.slow
def test_a_tampered_install_breaks_the_artifact_invariant(chaos_run: tuple[UpReport, Path], workdir: Path) -> None:
    _, devices = chaos_run
    dirs = {p.name: p for p in devices.iterdir()}
    trusted = load_trusted_key_bytes((workdir / "model" / "keys" / "up.key.pub",))
    checked, bad = check_installs(dirs, trusted)
    assert checked >= 3 and bad == []
    model = next(p for p in devices.glob("*/artifacts/*/*.onnx"))
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 1
    model.write_bytes(bytes(data))
    checked_after, bad = check_installs(dirs, trusted)
    assert checked_after == checked and len(bad) == 1 and "sha256" in bad[0], bad
