"""`edgectl compile --verify-on arm64`: the aarch64 artifacts run in an emulated arm64 userland
(qemu-aarch64 over the rootfs from scripts/make_arm64_rootfs.sh) and their numbers go in the
signed manifest next to the host's. The emulated suite builds the rootfs when it is missing and
fails (never skips) when it cannot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from compiler.crossarch import Userland, qemu_cpu
from edgectl.cli import app
from edgectl.manifest import verify_dir
from edgectl.signing import load_public_key, write_keypair
from edgectl.targets import all_targets, load_target

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
    # The Pi 4 core (no fp16 arithmetic) and the Pi 5 core, whose fp16 ONNX runs in half precision.
    args = ["compile", str(digits_cnn.onnx_path), "-t", "arm64-cortex-a72", "-t", "arm64-cortex-a76", "-t", "x86_64-avx2",
            "--calibration", str(digits_cnn.calibration), "--eval", str(digits_cnn.eval),
            "--labels", str(digits_cnn.labels), "--out", str(out), "--sign-key", str(key),
            "--verify-on", "arm64", "--arm64-rootfs", str(arm64_rootfs)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "arm64 (aarch64" in result.output
    for target, expected in (("arm64-cortex-a72", {"int8", "fp32", "tflite-fp32"}),
                             ("arm64-cortex-a76", {"int8", "fp16", "fp32", "tflite-int8", "tflite-fp16"})):
        manifest = verify_dir(out / target, public_key=load_public_key(public))  # signed with it
        emitted = [v for v in manifest["variants"] if v.get("file")]
        assert expected <= {v["variant"] for v in emitted}
        for v in emitted:
            emu = v["fidelity_emulated"]
            assert emu["machine"] == "aarch64" and emu["violations"] == [], (target, v["variant"], emu)
            assert emu["runtime"]
            assert emu["fidelity"]["samples"] == v["fidelity"]["samples"]
            assert emu["fidelity"]["top1_agreement"] >= 0.99
            assert emu["max_abs_vs_host"] <= v["selftest_atol"] == pytest.approx(emu["selftest_atol"])
        # On the emulated Cortex-A76 the fp16 ONNX accumulates in half precision: far from this
        # host's fp32-computed output, which the tolerance's emulated part has to cover.
        fp16 = next((v for v in emitted if v["variant"] == "fp16"), None)
        if fp16 is not None:
            basis = fp16["selftest_basis"]
            assert fp16["fidelity_emulated"]["max_abs_vs_host"] > 2 * basis["host_error"], basis
            assert basis["fp16_arithmetic"]["max_abs_vs_host"] > basis["host_error"]
    # x86 targets are not run in the arm64 userland.
    x86 = verify_dir(out / "x86_64-avx2", public_key=load_public_key(public))
    assert not any("fidelity_emulated" in v for v in x86["variants"])


@pytest.mark.parametrize("name", [t.name for t in all_targets() if t.arch == "aarch64"])
def test_emulated_cpu_offers_no_feature_the_target_lacks(name: str, tmp_path: Path) -> None:
    # qemu's default -cpu max advertises SVE2/SME/I8MM: LiteRT's XNNPACK then ran SME int8 GEMM
    # kernels no Cortex-A72 has, and the digits CNN's tflite-int8 agreed on 9% of top-1 labels.
    target = load_target(name)
    cpu = qemu_cpu(target)
    assert cpu != "max" and not cpu.startswith(("max,", "a64fx"))
    assert name != "arm64-cortex-a72" or cpu == "cortex-a72"
    userland = Userland("arm64", "aarch64", tmp_path, "/usr/bin/qemu-aarch64-static")
    command = userland.command(target)
    assert command[command.index("-cpu") + 1] == cpu


_GUEST_CASES = """
import json, sys
import numpy as np
from ai_edge_litert.interpreter import Interpreter
jobs = json.load(open(sys.argv[1]))
out = {}
for name, (model, data) in jobs.items():
    inputs = dict(np.load(data))
    it = Interpreter(model_path=model, num_threads=1)
    for d in it.get_input_details():
        it.resize_tensor_input(d["index"], list(inputs[d["name"]].shape))
    it.allocate_tensors()
    for d in it.get_input_details():
        it.set_tensor(d["index"], inputs[d["name"]])
    it.invoke()
    for i, d in enumerate(it.get_output_details()):
        out[f"{name}|{i}"] = it.get_tensor(d["index"])
np.savez(sys.argv[2], **out)
"""


@pytest.mark.arm64
def test_every_int8_conformance_case_matches_this_host_on_arm64(arm64_rootfs, tmp_path: Path) -> None:
    # Op by op, in seconds: every int8 kernel (XNNPACK's, on the emulated Cortex-A72) within one
    # LSB of this host's, so a kernel-path difference names its op instead of a whole model.
    from compiler.crossarch import find_userland
    from compiler.tflite import lower_to_tflite
    from tests.compiler.tflite.cases import INT8_EXCLUDES, INT8_MAX_LSB, all_cases
    from tests.compiler.tflite.quantized import output_scales, qdq_model
    from tests.compiler.tflite.runners import run_litert

    jobs, host, scales = {}, {}, {}
    for case in all_cases():
        if case.name in INT8_EXCLUDES:
            continue
        qdq = qdq_model(case)
        model = tmp_path / f"{case.name}.tflite"
        model.write_bytes(lower_to_tflite(qdq, precision="int8"))
        np.savez(tmp_path / f"{case.name}.npz", **case.inputs)  # type: ignore[arg-type]
        jobs[case.name] = (str(model), str(tmp_path / f"{case.name}.npz"))
        for i, (value, scale) in enumerate(zip(run_litert(model.read_bytes(), case.inputs),
                                               output_scales(qdq).values(), strict=True)):
            host[f"{case.name}|{i}"], scales[f"{case.name}|{i}"] = value, scale
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    (tmp_path / "guest.py").write_text(_GUEST_CASES)
    userland = find_userland("arm64", arm64_rootfs)
    proc = subprocess.run([*userland.command(load_target("arm64-cortex-a72")), str(tmp_path / "guest.py"),
                           str(tmp_path / "jobs.json"), str(tmp_path / "out.npz")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with np.load(tmp_path / "out.npz") as npz:
        far = {}
        for key, want in host.items():
            diff = float(np.abs(npz[key].astype(np.float64) - want).max())
            scale = scales[key]
            if diff > (1e-5 if scale is None else INT8_MAX_LSB * scale * (1 + 1e-4)):
                far[key] = diff if scale is None else f"{diff / scale:.1f} LSB"
    assert far == {}, far
