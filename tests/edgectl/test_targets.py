import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from compiler.schemes import scheme_for
from edgectl.cli import app
from edgectl.errors import TargetError
from edgectl.targets import all_targets, load_target, parse_target

REQUIRED = {"x86_64-avx2", "x86_64-avx512-vnni", "arm64-cortex-a72", "arm64-cortex-a76", "jetson-orin-cpu"}
runner = CliRunner()


def test_builtin_targets_parse_and_cover_the_fleet():
    targets = {t.name: t for t in all_targets()}
    assert set(targets) >= REQUIRED
    assert not targets["x86_64-avx2"].has("avx512_vnni")
    assert targets["x86_64-avx512-vnni"].has("avx512_vnni")
    assert not targets["arm64-cortex-a72"].has("asimddp")
    assert targets["arm64-cortex-a76"].has("asimddp")
    assert "fp16" in targets["jetson-orin-cpu"].precisions


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("x86_64-avx2", "u8s8-pc-rr"),
        ("x86_64-avx512-vnni", "u8s8-pc"),
        ("arm64-cortex-a72", "s8s8-pc"),
        ("arm64-cortex-a76", "s8s8-pc"),
        ("jetson-orin-cpu", "s8s8-pc"),
    ],
)
def test_scheme_follows_isa(name, key):
    assert scheme_for(load_target(name)).key == key


def test_target_is_frozen():
    t = load_target("arm64-cortex-a72")
    with pytest.raises(AttributeError):
        t.arch = "x86_64"  # type: ignore[misc]


def test_adding_a_target_is_adding_a_file(tmp_path: Path):
    (tmp_path / "rk3588.toml").write_text(
        'name = "rk3588"\narch = "aarch64"\nisa = ["neon", "asimddp"]\n'
        'runtimes = ["onnxruntime"]\nprecisions = ["int8"]\nmemory_mb = 8192\n'
    )
    assert "rk3588" in {t.name for t in all_targets([tmp_path])}
    result = runner.invoke(app, ["targets", "show", "rk3588", "--targets-dir", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["int8_scheme"]["activation_type"] == "int8"  # ARM: s8 activations


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ("name = [", "not valid TOML"),
        ('name = "bad"\narch = "sparc"\nisa=["x"]\nruntimes=["onnxruntime"]\nprecisions=["int8"]\nmemory_mb=1', "arch"),
        ('name = "bad"\narch = "x86_64"\nisa=["x"]\nruntimes=["tvm"]\nprecisions=["int8"]\nmemory_mb=1', "runtimes"),
        ('name = "bad"\narch = "x86_64"\nisa=["x"]\nruntimes=["onnxruntime"]\nprecisions=["int4"]\nmemory_mb=1', "precisions"),
        ('name = "bad"\narch = "x86_64"\nisa=["x"]\nruntimes=["onnxruntime"]\nprecisions=["int8"]\nmemory_mb=0', "memory_mb"),
        ('name = "other"\narch = "x86_64"\nisa=["x"]\nruntimes=["onnxruntime"]\nprecisions=["int8"]\nmemory_mb=1', "file is named"),
        ('name = "bad"\narch = "x86_64"\nisa=["x"]\nruntimes=["onnxruntime"]\nprecisions=["int8"]\nmemory_mb=1\ncolour=1', "unknown field"),
    ],
)
def test_malformed_target_names_the_problem(tmp_path: Path, body: str, problem: str):
    path = tmp_path / "bad.toml"
    path.write_text(body)
    with pytest.raises(TargetError, match=problem):
        parse_target(path)


def test_unknown_target_lists_known_ones():
    with pytest.raises(TargetError, match="x86_64-avx2"):
        load_target("pdp11")


def test_cli_list_json_and_table():
    result = runner.invoke(app, ["targets", "list", "--json"])
    assert result.exit_code == 0
    assert {t["name"] for t in json.loads(result.output)} >= REQUIRED
    table = runner.invoke(app, ["targets", "list"])
    assert table.exit_code == 0 and "jetson-orin-cpu" in table.output


def test_cli_show_prints_scheme():
    result = runner.invoke(app, ["targets", "show", "x86_64-avx2"])
    assert result.exit_code == 0
    assert "reduce_range=True" in result.output
