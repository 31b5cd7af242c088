"""``edgectl fleet …`` through typer's CliRunner, on a store and artifact folder in tmp_path.

The compile output is the session fixture ``digits_artifacts`` (the digits CNN, signed, for
x86_64-avx2 and arm64-cortex-a72); devices are written straight into the store, as the
controller would from their retained state.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from edgectl.cli import app
from fleet.config import load_fleet_config
from fleet.model import Device
from fleet.store import Store, open_store
from tests.artifacts import CompiledArtifacts

MODEL = "digits_cnn"
runner = CliRunner()


def _write_config(folder: Path, key: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "fleet.toml"
    path.write_text(f'store_url = "fleet.db"\nartifact_dir = "artifacts"\ntrusted_keys = ["{key}"]\n')
    return path


@pytest.fixture
def cfg(tmp_path: Path, digits_artifacts: CompiledArtifacts) -> Path:
    return _write_config(tmp_path / "ctl", digits_artifacts.public_key)


@pytest.fixture
def published(cfg: Path, digits_artifacts: CompiledArtifacts) -> Path:
    result = fleet(cfg, "publish", str(digits_artifacts.out_dir))
    assert result.exit_code == 0, result.output
    return cfg


@pytest.fixture
def deployed(published: Path) -> Path:
    result = fleet(published, "deploy", MODEL, "--replicas", "2")
    assert result.exit_code == 0, result.output
    return published


def fleet(cfg: Path, *args: str) -> Result:
    return runner.invoke(app, ["fleet", *args, "--config", str(cfg)])


def as_json(result: Result) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def assert_one_line_error(result: Result, code: int, *words: str) -> None:
    assert result.exit_code == code, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for word in words:
        assert word in lines[0], lines[0]


def store_of(cfg: Path) -> Store:
    return open_store(load_fleet_config(cfg).store_url)


def add_devices(cfg: Path, digits_artifacts: CompiledArtifacts) -> None:
    """One x86_64 device that fits the avx2 variants and one armv7l device nothing is built for."""
    isa = frozenset(digits_artifacts.manifest("x86_64-avx2")["target"]["isa"])
    now = time.time()
    common: dict[str, Any] = {"online": True, "last_seen": now, "memory_total": 4 << 30,
                              "memory_available": 3 << 30, "disk_free": 20 << 30, "cpu_percent": 12.0}
    store = store_of(cfg)
    try:
        store.upsert_device(Device("x86-1", "x86_64", isa=isa, runtimes=frozenset({"onnxruntime"}),
                                   labels={"site": "lab"}, **common), {})
        store.upsert_device(Device("pi-zero", "armv7l", isa=frozenset({"neon"}),
                                   runtimes=frozenset({"onnxruntime"}), temperature_c=48.0, **common), {})
    finally:
        store.close()


# --- config and publish ----------------------------------------------------------------------------

def test_missing_config_is_one_line(tmp_path: Path) -> None:
    for args in (["status"], ["publish", str(tmp_path)], ["deploy", MODEL, "--replicas", "1"]):
        result = fleet(tmp_path / "nope.toml", *args)
        assert_one_line_error(result, 2, "nope.toml", "does not exist")


def test_publish_registers_version_1_once(cfg: Path, digits_artifacts: CompiledArtifacts) -> None:
    first = as_json(fleet(cfg, "publish", str(digits_artifacts.out_dir), "--json"))
    assert (first["model"], first["version"], first["new"]) == (MODEL, 1, True)
    assert first["targets"] == sorted(digits_artifacts.folders)
    assert all(len(sha) == 64 for sha in first["manifests"].values())
    again = fleet(cfg, "publish", str(digits_artifacts.out_dir))
    assert again.exit_code == 0, again.output
    assert f"already published: {MODEL} v1" in again.stdout
    for target, sha in first["manifests"].items():
        assert target in again.stdout and sha in again.stdout


def test_publish_refuses_an_untrusted_key(tmp_path: Path, digits_artifacts: CompiledArtifacts) -> None:
    from edgectl.signing import write_keypair

    other = write_keypair(tmp_path / "other.key")
    result = fleet(_write_config(tmp_path / "ctl", other), "publish", str(digits_artifacts.out_dir))
    assert_one_line_error(result, 3, "does not trust", "trusted_keys")


def test_publish_a_folder_without_manifest(cfg: Path, tmp_path: Path) -> None:
    assert_one_line_error(fleet(cfg, "publish", str(tmp_path)), 3, "no manifest.json")


# --- deploy ----------------------------------------------------------------------------------------

def test_deploy_creates_then_updates(published: Path) -> None:
    out = as_json(fleet(published, "deploy", MODEL, "--replicas", "2", "--json"))
    assert out["result"].startswith(f"created {MODEL}")
    spec = out["deployment"]
    assert (spec["name"], spec["model"], spec["version"], spec["replicas"]) == (MODEL, MODEL, 1, 2)
    assert spec["precisions"] == ["int8", "fp16", "fp32"] and spec["strategy"] == "binpack"
    again = fleet(published, "deploy", MODEL, "--all", "--selector", "site=lab,tier=edge", "--canary", "10%",
                  "--precision", "fp32,int8", "--strategy", "spread", "--max-p95-ms", "20")
    assert again.exit_code == 0 and again.stdout.startswith(f"updated {MODEL}"), again.output
    [listed] = as_json(fleet(published, "deployments", "--json"))
    assert listed["replicas"] is None and listed["selector"] == {"site": "lab", "tier": "edge"}
    assert (listed["canary_percent"], listed["precisions"], listed["max_p95_ms"]) == (10.0, ["fp32", "int8"], 20.0)


def test_deploy_under_another_name(published: Path) -> None:
    assert fleet(published, "deploy", MODEL, "--replicas", "1", "--name", "digits-b", "--version", "1").exit_code == 0
    assert [d["name"] for d in as_json(fleet(published, "deployments", "--json"))] == ["digits-b"]


@pytest.mark.parametrize(("args", "words"), [
    (["nope", "--replicas", "1"], ["'nope' is not published"]),
    ([MODEL, "--replicas", "1", "--version", "7"], ["version 7 is not published"]),
    ([MODEL, "--replicas", "2", "--all"], ["--replicas N or --all"]),
    ([MODEL], ["--replicas N or --all"]),
    ([MODEL, "--replicas", "0"], ["--replicas 0"]),
    ([MODEL, "--all", "--selector", "site"], ["--selector 'site'", "key=value"]),
    ([MODEL, "--all", "--selector", "a=1", "--selector", "a=2"], ["names a twice"]),
    ([MODEL, "--all", "--canary", "150%"], ["--canary '150%'", "0 to 100"]),
    ([MODEL, "--all", "--canary", "ten"], ["--canary 'ten'"]),
    ([MODEL, "--all", "--precision", "int4,fp32"], ["unknown precision int4"]),
    ([MODEL, "--all", "--strategy", "random"], ["--strategy 'random'"]),
    ([MODEL, "--all", "--max-unavailable", "0"], ["--max-unavailable 0"]),
    ([MODEL, "--all", "--max-p95-ms", "-1"], ["--max-p95-ms -1"]),
])
def test_deploy_refuses_bad_input_in_one_line(published: Path, args: list[str], words: list[str]) -> None:
    assert_one_line_error(fleet(published, "deploy", *args), 2, *words)
    assert as_json(fleet(published, "deployments", "--json")) == []


def test_undeploy(deployed: Path) -> None:
    result = fleet(deployed, "undeploy", MODEL)
    assert result.exit_code == 0 and "removed from 0 device(s)" in result.stdout, result.output
    assert_one_line_error(fleet(deployed, "undeploy", MODEL), 2, MODEL)


# --- status and inventories ------------------------------------------------------------------------

def test_status_json_shape(deployed: Path, digits_artifacts: CompiledArtifacts) -> None:
    add_devices(deployed, digits_artifacts)
    data = as_json(fleet(deployed, "status", "--json"))
    assert set(data) == {"devices", "deployments", "ts"}
    assert [d["id"] for d in data["devices"]] == ["pi-zero", "x86-1"]
    pi = data["devices"][0]
    assert (pi["arch"], pi["online"], pi["temperature_c"], pi["memory_used_percent"], pi["models"]) == \
        ("armv7l", True, 48.0, 25.0, [])
    [dep] = data["deployments"]
    assert {k: dep[k] for k in ("name", "version", "desired", "running", "failed", "pending", "rollout")} == \
        {"name": MODEL, "version": 1, "desired": 2, "running": 0, "failed": 0, "pending": 0, "rollout": None}


def test_status_tables(deployed: Path, digits_artifacts: CompiledArtifacts) -> None:
    empty = fleet(deployed, "status")
    assert empty.exit_code == 0, empty.output
    assert "no devices yet" in empty.stdout and f"{MODEL}@1" in empty.stdout
    add_devices(deployed, digits_artifacts)
    result = fleet(deployed, "status")
    assert result.exit_code == 0, result.output
    row = next(line for line in result.stdout.splitlines() if "x86-1" in line)
    assert "x86_64" in row and "yes" in row and "—" in row  # no temperature sensor
    assert "48 °C" in next(line for line in result.stdout.splitlines() if "pi-zero" in line)


def test_status_watch_renders_and_stops_on_ctrl_c(deployed: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import edgectl.cli.fleet as fleet_cli

    naps: list[float] = []

    def interrupted(seconds: float) -> None:
        naps.append(seconds)
        if len(naps) == 2:  # one refresh after the first render, then Ctrl-C
            raise KeyboardInterrupt

    monkeypatch.setattr(fleet_cli.time, "sleep", interrupted)
    result = fleet(deployed, "status", "--watch", "--interval", "0.5")
    assert result.exit_code == 0, result.output
    assert naps == [0.5, 0.5]
    assert f"{MODEL}@1" in result.stdout and "every 0.5 s" in result.stdout
    assert_one_line_error(fleet(deployed, "status", "--watch", "--interval", "0"), 2, "--interval")


def test_devices_deployments_events(deployed: Path, digits_artifacts: CompiledArtifacts) -> None:
    add_devices(deployed, digits_artifacts)
    devices = as_json(fleet(deployed, "devices", "--json"))
    assert [(d["id"], d["arch"]) for d in devices] == [("pi-zero", "armv7l"), ("x86-1", "x86_64")]
    assert devices[1]["runtimes"] == ["onnxruntime"] and devices[1]["labels"] == {"site": "lab"}
    assert "x86-1" in fleet(deployed, "devices").stdout
    assert [d["name"] for d in as_json(fleet(deployed, "deployments", "--json"))] == [MODEL]
    assert "binpack" in fleet(deployed, "deployments").stdout
    events = as_json(fleet(deployed, "events", "--json"))
    assert [e["kind"] for e in events] == ["published", "deployed"]
    later = as_json(fleet(deployed, "events", "--since", str(events[0]["id"]), "--json"))
    assert [e["kind"] for e in later] == ["deployed"]
    assert len(as_json(fleet(deployed, "events", "--limit", "1", "--json"))) == 1
    assert as_json(fleet(deployed, "events", "--subject", "x86-1", "--json")) == []
    table = fleet(deployed, "events")
    assert "published" in table.stdout and "deployed" in table.stdout
    assert_one_line_error(fleet(deployed, "events", "--limit", "0"), 2, "--limit")


# --- explain and drain -----------------------------------------------------------------------------

def test_explain_without_devices(deployed: Path) -> None:
    result = fleet(deployed, "explain", MODEL)
    assert result.exit_code == 0, result.output
    assert "no devices registered yet" in result.stdout
    assert as_json(fleet(deployed, "explain", MODEL, "--json"))["verdicts"] == []
    assert_one_line_error(fleet(deployed, "explain", "nope"), 2, "nope")


def test_explain_places_and_rejects_with_every_reason(deployed: Path, digits_artifacts: CompiledArtifacts) -> None:
    add_devices(deployed, digits_artifacts)
    result = fleet(deployed, "explain", MODEL)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "2 device(s): 1 could take a replica, 1 could not" in out
    assert out.index("✓ x86-1: would place x86_64-avx2/") < out.index("✗ pi-zero: cannot take a replica")
    assert "(int8, onnxruntime), score " in out and "    scores: binpack " in out
    assert "✗ arch: no variant for armv7l (model has " in out
    data = as_json(fleet(deployed, "explain", MODEL, "--json"))
    assert data["deployment"]["name"] == MODEL
    x86, pi = data["verdicts"]
    assert (x86["device"], x86["feasible"], x86["variant"]["precision"]) == ("x86-1", True, "int8")
    assert -1 <= x86["score"] <= 1 and x86["rejections"] == []
    assert (pi["device"], pi["feasible"], pi["variant"]) == ("pi-zero", False, None)
    assert [r["filter"] for r in pi["rejections"]] == ["arch"]


def test_explain_one_device_and_drain(deployed: Path, digits_artifacts: CompiledArtifacts) -> None:
    add_devices(deployed, digits_artifacts)
    one = fleet(deployed, "explain", MODEL, "--device", "pi-zero")
    assert one.exit_code == 0, one.output
    assert "x86-1" not in one.stdout and "could take" not in one.stdout  # no fleet summary for one device
    assert "✗ pi-zero: cannot take a replica of digits_cnn (1 reason)" in one.stdout
    assert_one_line_error(fleet(deployed, "explain", MODEL, "--device", "ghost"), 2, "ghost")

    drained = fleet(deployed, "drain", "x86-1")
    assert drained.exit_code == 0 and "draining x86-1" in drained.stdout, drained.output
    assert as_json(fleet(deployed, "devices", "--json"))[1]["draining"] is True
    why = fleet(deployed, "explain", MODEL, "--device", "x86-1")
    assert "✗ x86-1: cannot take a replica" in why.stdout and "✗ draining: device is draining" in why.stdout
    assert "    · variant: digits_cnn@1/x86_64-avx2/" in why.stdout  # the variant it would have run
    assert "(draining)" in fleet(deployed, "status").stdout

    assert fleet(deployed, "undrain", "x86-1").exit_code == 0
    assert "✓ x86-1: would place" in fleet(deployed, "explain", MODEL, "--device", "x86-1").stdout
    assert_one_line_error(fleet(deployed, "drain", "ghost"), 2, "ghost")


# --- serve -----------------------------------------------------------------------------------------

def test_serve_runs_the_controller_with_the_config(cfg: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import fleet.controller as controller

    seen: list[Any] = []

    def serve(c: Any) -> int:
        seen.append(c)
        return 0

    monkeypatch.setattr(controller, "serve", serve)
    result = fleet(cfg, "serve")
    assert result.exit_code == 0, result.output
    assert seen == [load_fleet_config(cfg)]


def test_cli_import_does_not_load_the_store() -> None:
    """The [agent] extra has no SQLAlchemy: the fleet commands import it only when they run."""
    import subprocess
    import sys

    code = ("import sys, edgectl.cli; "
            "print([m for m in ('sqlalchemy', 'fleet.store', 'fleet.ops', 'paho') if m in sys.modules])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr
