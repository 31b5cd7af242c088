"""Cross-architecture check: run an aarch64 target's artifacts in an emulated arm64 userland and
record how close they come to the fp32 reference, next to the host's numbers in the manifest.

    arm64 rootfs (scripts/make_arm64_rootfs.sh: Debian + onnxruntime + LiteRT)
        │  qemu-aarch64 user mode (-L rootfs, -cpu per target): crossarch_guest.py runs every artifact
        ▼
    outputs ─► fidelity.compare vs the fp32 reference ─► variant["fidelity_emulated"] (before signing)
            └► max |Δ| vs the same artifact on this host ≤ selftest_atol (what the device self-test promises)

    >>> check = EmulatedCheck(find_userland("arm64", None), Budget())
    >>> compile_model(model, CompileOptions(..., cross_check=check))
    >>> check.failures
    []
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from compiler.data import TensorSet
from compiler.fidelity import Budget, Outputs, compare, run
from edgectl.errors import UserError
from edgectl.targets import Target

if TYPE_CHECKING:
    from compiler.manifest_builder import ManifestContext

# --verify-on name → the targets' `arch` field, and the qemu user-mode binary that runs it.
ARCHES = {"arm64": ("aarch64", "qemu-aarch64-static")}
# qemu's CPU model for a target, by its `isa`: the emulated CPU must offer no more than the device,
# or LiteRT's XNNPACK picks kernels the device never runs. qemu's default (-cpu max) advertises
# SVE2/SME/I8MM; on it XNNPACK takes its SME int8 GEMM path, which under qemu 7.2 gives wrong
# int8 conv/fully-connected outputs (digits CNN: top-1 agree 9%) while a real Cortex-A72 has no SME.
# First match wins; a model with at least the listed features and nothing the device lacks.
QEMU_CPUS = (({"neon", "asimddp", "asimdhp"}, "cortex-a76"), ({"neon"}, "cortex-a72"))
ROOTFS_SCRIPT = "scripts/make_arm64_rootfs.sh"
READY_MARK = ".edgectl-verify-ready"
GUEST = Path(__file__).with_name("crossarch_guest.py")
# qemu runs a small CNN's few hundred samples in seconds; this bounds a hung emulator.
TIMEOUT_S = 900


class UserlandError(UserError):
    """No usable emulated userland for --verify-on: the message says how to create one."""


def default_rootfs(arch: str) -> Path:
    return Path.home() / ".cache" / "edgectl" / f"{arch}-rootfs"


@dataclass(frozen=True)
class Userland:
    """A foreign-architecture root filesystem and how to start its Python."""

    name: str  # arm64
    arch: str  # aarch64, as in targets/*.toml
    rootfs: Path
    emulator: str | None  # None when this host runs the architecture natively

    def command(self, target: Target | None = None) -> list[str]:
        python = str(self.rootfs / "usr" / "bin" / "python3")
        if self.emulator is None:
            return [python]
        # -L: the guest's absolute paths resolve in the rootfs first, then on the host (artifacts, job files).
        cpu = [] if target is None else ["-cpu", qemu_cpu(target)]
        return [self.emulator, *cpu, "-L", str(self.rootfs), python]

    def describe(self) -> str:
        how = "native" if self.emulator is None else f"{Path(self.emulator).name} user mode"
        return f"{self.name} userland {self.rootfs} ({how})"

    def run_artifacts(self, artifacts: dict[str, Path], data: TensorSet,
                      target: Target | None = None) -> tuple[dict[str, list[np.ndarray]], dict]:
        """Every artifact's outputs on ``data`` in this userland (emulating ``target``'s CPU when
        given), and the guest's result.json."""
        with tempfile.TemporaryDirectory(prefix="edgectl-crossarch-") as tmp:
            job_dir = Path(tmp)
            np.savez(job_dir / "data.npz", **data)  # type: ignore[arg-type]
            job = {"data": str(job_dir / "data.npz"), "artifacts": {k: str(p.resolve()) for k, p in artifacts.items()}}
            (job_dir / "job.json").write_text(json.dumps(job))
            try:
                proc = subprocess.run([*self.command(target), str(GUEST), str(job_dir)], capture_output=True, text=True,
                                      timeout=TIMEOUT_S, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
            except subprocess.TimeoutExpired as exc:
                raise UserlandError(f"the {self.describe()} did not finish in {TIMEOUT_S} s") from exc
            if proc.returncode != 0 or not (job_dir / "result.json").exists():
                tail = " ".join((proc.stderr or proc.stdout).split())[-300:]
                raise UserlandError(f"the {self.describe()} failed (exit {proc.returncode}): {tail}: "
                                    f"rebuild it with {ROOTFS_SCRIPT}")
            result = json.loads((job_dir / "result.json").read_text())
            outputs = {}
            for variant in artifacts:
                if variant not in result["errors"]:
                    with np.load(job_dir / f"out.{variant}.npz") as npz:
                        outputs[variant] = [npz[f"o{i}"] for i in range(len(npz.files))]
            return outputs, result


def qemu_cpu(target: Target) -> str:
    """The qemu ``-cpu`` model that offers ``target``'s ISA features and none it lacks."""
    isa = set(target.isa)
    for needs, cpu in QEMU_CPUS:
        if needs <= isa:
            return cpu
    raise UserlandError(f"no qemu CPU model for {target.name} (isa {sorted(isa)})")


def find_userland(name: str, rootfs: Path | None) -> Userland:
    """The userland for ``--verify-on NAME``, or a one-line error that says how to create it."""
    if name not in ARCHES:
        raise UserlandError(f"--verify-on {name!r} is not supported (supported: {', '.join(ARCHES)})")
    arch, qemu = ARCHES[name]
    root = rootfs or default_rootfs(name)
    if not (root / READY_MARK).exists():
        raise UserlandError(
            f"no {name} userland at {root}: create it with {ROOTFS_SCRIPT} (root; about 2 min), "
            f"or pass --{name}-rootfs / set EDGECTL_{name.upper()}_ROOTFS"
        )
    emulator = None
    if platform.machine() != arch:
        emulator = shutil.which(qemu) or shutil.which(qemu.removesuffix("-static"))
        if emulator is None:
            raise UserlandError(f"{qemu} is not installed: apt-get install qemu-user-static")
    return Userland(name, arch, root, emulator)


@dataclass
class EmulatedCheck:
    """The ``cross_check`` hook of ``compile_model``: called per target folder before signing;
    returns variant → record for the manifest. ``failures`` lists what did not hold."""

    userland: Userland
    budget: Budget
    failures: list[str] = field(default_factory=list)
    records: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)

    def __call__(self, target: Target, emitted: dict[str, Path], ctx: ManifestContext,
                 atols: dict[str, float]) -> dict[str, dict[str, Any]]:
        if target.arch != self.userland.arch or not emitted:
            return {}
        data, reference = ctx.data.eval_data, ctx.reference
        outputs, result = self.userland.run_artifacts(emitted, data, target)
        records: dict[str, dict[str, Any]] = {}
        for variant, path in emitted.items():
            rec: dict[str, Any] = {
                "machine": result["machine"],
                "emulator": None if self.userland.emulator is None else Path(self.userland.emulator).name,
                "runtime": result["runtimes"]["ai-edge-litert" if path.suffix == ".tflite" else "onnxruntime"],
            }
            if variant in result["errors"]:
                rec["error"] = result["errors"][variant]
                self.failures.append(f"{target.name}/{variant} on {self.userland.name}: {rec['error']}")
                records[variant] = rec
                continue
            got = Outputs(reference.names, tuple(outputs[variant]), ())
            fid = compare(got, reference, labels=ctx.data.labels, size_bytes=path.stat().st_size).to_dict()
            fid.pop("latency_p50_ms")  # emulated time says nothing about the device
            host = run(path, data)
            floats = [i for i, v in enumerate(host.values) if v.dtype.kind == "f"]
            vs_host = max((float(np.abs(host.values[i].astype(np.float64) - got.values[i]).max()) for i in floats),
                          default=0.0)
            atol = atols[variant]  # the manifest's own: what the device's self-test will hold it to
            violations = self.budget.violations(compare(got, reference, labels=ctx.data.labels, size_bytes=0))
            if vs_host > atol:
                violations.append(f"max |Δ| vs this host's output {vs_host:.3g} is over the self-test "
                                  f"tolerance {atol:.3g}")
            rec.update({"fidelity": fid, "max_abs_vs_host": vs_host, "selftest_atol": atol, "violations": violations})
            self.failures += [f"{target.name}/{variant} on {self.userland.name}: {v}" for v in violations]
            records[variant] = rec
        self.records[target.name] = records
        return records
