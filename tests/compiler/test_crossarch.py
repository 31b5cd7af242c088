"""`edgectl compile --verify-on arm64`: the aarch64 artifacts run in an emulated arm64 userland
(qemu-aarch64 over the rootfs from scripts/make_arm64_rootfs.sh) and their numbers go in the
signed manifest next to the host's. The emulated suite builds the rootfs when it is missing and
fails (never skips) when it cannot."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgectl.cli import app
from edgectl.manifest import verify_dir
from edgectl.signing import load_public_key, write_keypair

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()


def test_missing_userland_is_one_line_that_names_the_script(tmp_path: Path) -> None:
    result = runner.invoke(app, ["compile", "model.onnx", "-t", "arm64-cortex-a72", "--random-calibration",
                                 "--out", str(tmp_path / "out"), "--verify-on", "arm64",
                                 "--arm64-rootfs", str(tmp_path / "nothing")])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "scripts/make_arm64_rootfs.sh" in lines[0] and "no arm64 userland" in lines[0]


def test_unknown_userland_is_refused(tmp_path: Path) -> None:
    result = runner.invoke(app, ["compile", "m.onnx", "-t", "x86_64-avx2", "--random-calibration",
                                 "--out", str(tmp_path / "o"), "--verify-on", "riscv64"])
    assert result.exit_code == 2 and "supported: arm64" in result.output


@pytest.fixture(scope="session")
def arm64_rootfs() -> Path:
    """The cached arm64 userland, built (about 2 min, root) when missing."""
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run([str(REPO / "scripts" / "make_arm64_rootfs.sh")], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        pytest.fail(f"scripts/make_arm64_rootfs.sh failed:\n{proc.stderr[-3000:]}", pytrace=False)
    return Path(proc.stdout.strip().splitlines()[-1])


@pytest.mark.arm64
@pytest.mark.slow
def test_verify_on_arm64_records_emulated_fidelity_before_signing(digits_cnn, arm64_rootfs, tmp_path: Path) -> None:
    key = tmp_path / "signer"
    public = write_keypair(key)
    out = tmp_path / "out"
    args = ["compile", str(digits_cnn.onnx_path), "-t", "arm64-cortex-a72", "-t", "x86_64-avx2",
            "--calibration", str(digits_cnn.calibration), "--eval", str(digits_cnn.eval),
            "--labels", str(digits_cnn.labels), "--out", str(out), "--sign-key", str(key),
            "--verify-on", "arm64", "--arm64-rootfs", str(arm64_rootfs)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "arm64 (aarch64" in result.output
    manifest = verify_dir(out / "arm64-cortex-a72", public_key=load_public_key(public))  # signed with it
    emitted = [v for v in manifest["variants"] if v.get("file")]
    assert {"int8", "fp32", "tflite-fp32"} <= {v["variant"] for v in emitted}
    for v in emitted:
        emu = v["fidelity_emulated"]
        assert emu["machine"] == "aarch64" and emu["violations"] == [], (v["variant"], emu)
        assert emu["runtime"]
        assert emu["fidelity"]["samples"] == v["fidelity"]["samples"]
        assert emu["fidelity"]["top1_agreement"] >= 0.99
        assert emu["max_abs_vs_host"] <= v["selftest_atol"] == pytest.approx(emu["selftest_atol"])
    # x86 targets are not run in the arm64 userland.
    x86 = verify_dir(out / "x86_64-avx2", public_key=load_public_key(public))
    assert not any("fidelity_emulated" in v for v in x86["variants"])
