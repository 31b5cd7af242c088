"""Assemble one target folder: artifacts, the self-test pair, and the (signed) manifest."""

from __future__ import annotations

import platform
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from compiler.data import InputSpec, take
from compiler.fidelity import Outputs, run
from compiler.frontends import LoadedModel
from compiler.output import write_npz
from edgectl import manifest as mf
from edgectl.hashing import sha256_file
from edgectl.targets import Target

if TYPE_CHECKING:
    from compiler.pipeline import DataSets
    from compiler.variants import Built

SELFTEST_SAMPLES = 2
SELFTEST_NAME = "selftest.npz"
# A device's kernels differ from this host's (ISA, threading): it must reproduce the host's
# output of the same artifact to within twice the larger of the artifact's own error vs fp32 and
# the deviation predicted for the device's arithmetic. The latter matters for fp16 ONNX: x86
# computes it in fp32 after casts, an ARMv8.2 core in half precision (compiler.emulate_fp16).
SELFTEST_ERROR_FACTOR = 2.0
# When the fp16 emulation cannot run a graph: the device deviation is taken as this many times
# the host error (digits CNN under qemu cortex-a76: 0.102 device vs host, 0.0058 host vs fp32).
FP16_UNEMULATED_FACTOR = 20.0
SELFTEST_MIN_ATOL = 1e-4


@dataclass(frozen=True)
class ManifestContext:
    loaded: LoadedModel
    specs: list[InputSpec]
    reference: Outputs
    data: DataSets
    sign_key: Ed25519PrivateKey | None
    # Runs a target's emitted artifacts elsewhere (compiler.crossarch) → variant → manifest record.
    cross_check: CrossCheck | None = None


# (target, emitted variant → file, context, variant → the manifest's selftest_atol) → variant → record
CrossCheck = Callable[[Target, dict[str, Path], ManifestContext, dict[str, float]], dict[str, dict[str, Any]]]


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


@cache
def toolchain() -> dict[str, str]:
    dists = ("edgectl", "onnx", "onnxruntime", "numpy", "torch", "skl2onnx", "scikit-learn")
    found = {d: _version(d) for d in dists}
    return {"python": platform.python_version(), **{k: v for k, v in found.items() if v}}


@cache
def host() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"machine": platform.machine(), "cpu": model, "system": platform.system()}


def _model_info(ctx: ManifestContext) -> dict[str, Any]:
    ref = ctx.reference
    return {
        "name": ctx.loaded.source_name,
        "source_format": ctx.loaded.source_format,
        "source_sha256": ctx.loaded.source_sha256,
        "opset": max((o.version for o in ctx.loaded.model.opset_import if o.domain in ("", "ai.onnx")), default=0),
        "inputs": [{"name": s.name, "dtype": str(s.dtype), "shape": list(s.shape)} for s in ctx.specs],
        "outputs": [
            {"name": n, "dtype": str(v.dtype), "shape": ["N", *v.shape[1:]]}
            for n, v in zip(ref.names, ref.values, strict=True)
        ],
    }


def _selftest(folder: Path, ctx: ManifestContext, emitted: dict[str, Path]) -> dict[str, Any]:
    sample = take(ctx.data.eval_data, slice(0, SELFTEST_SAMPLES))
    arrays = {f"input.{k}": v for k, v in sample.items()}
    for variant, path in emitted.items():
        out = run(path, sample)
        arrays.update({f"output.{variant}.{n}": v for n, v in zip(ctx.reference.names, out.values, strict=True)})
    write_npz(folder / SELFTEST_NAME, arrays)
    return {"file": SELFTEST_NAME, "samples": SELFTEST_SAMPLES, "keys": "input.<input>, output.<variant>.<output>"}


def selftest_atol(host_max_abs: float, device_max_abs: float = 0.0) -> float:
    """How far a device's output of an artifact may be from this host's: a multiple of the larger
    of the artifact's own float error vs fp32 here and the predicted device-vs-host deviation."""
    return max(SELFTEST_MIN_ATOL, SELFTEST_ERROR_FACTOR * max(host_max_abs, device_max_abs))


def selftest_tolerance(built: Built, path: Path | None, ctx: ManifestContext) -> dict[str, Any]:
    """``selftest_atol`` and what it was made of (``selftest_basis``) for one built variant; empty
    when the variant has no fidelity record."""
    if built.fidelity is None:
        return {}
    worst = max((e.max_abs for e in built.fidelity.outputs.values() if e.agreement is None), default=0.0)
    basis: dict[str, Any] = {"host_error": worst, "factor": SELFTEST_ERROR_FACTOR}
    device = 0.0
    if built.precision == "fp16" and built.format == "onnx" and path is not None:
        from compiler.emulate_fp16 import cached_half_arithmetic_deviation

        try:
            dev = cached_half_arithmetic_deviation(path, ctx.data.eval_data, min_samples=SELFTEST_SAMPLES)
            device = dev.max_abs
            basis["fp16_arithmetic"] = {"max_abs_vs_host": dev.max_abs, "samples": dev.samples,
                                        "emulated": "ARMv8.2 fp16 FMA accumulation"}
        except (ValueError, RuntimeError, TypeError, NotImplementedError) as exc:
            device = FP16_UNEMULATED_FACTOR * worst
            basis["fp16_arithmetic"] = {"max_abs_vs_host": device, "not_emulated": str(exc)[:200],
                                        "assumed": f"{FP16_UNEMULATED_FACTOR:g} x host_error"}
    return {"selftest_atol": selftest_atol(worst, device), "selftest_basis": basis}


def _variant_entry(built: Built, file: str | None, tolerance: dict[str, Any]) -> dict[str, Any]:
    fid = built.fidelity.to_dict() if built.fidelity else None
    entry: dict[str, Any] = {
        "variant": built.name,
        "precision": built.precision,
        "format": built.format,
        "runtime": built.runtime,
        "file": file,
        "quantization": built.quantization,
        "fallback_nodes": built.fallback_nodes,
        "fidelity": fid,
    }
    entry.update(tolerance)
    if built.skipped:
        entry["skipped"] = built.reason
    elif not built.emitted:
        entry["rejected"] = built.reason
    return entry


def write_target(folder: Path, target: Target, builts: list[Built], ctx: ManifestContext) -> dict[str, str]:
    """Write the folder; returns variant name → artifact file name (empty when nothing passed)."""
    folder.mkdir()
    files: dict[str, str] = {}
    emitted: dict[str, Path] = {}
    for built in builts:
        if built.path is None:
            continue
        name = f"{ctx.loaded.source_name}.{built.precision}.{built.format}"
        shutil.copyfile(built.path, folder / name)
        files[built.name] = name
        emitted[built.name] = folder / name
    if not files:
        return {}
    tolerances = {b.name: selftest_tolerance(b, emitted.get(b.name), ctx) for b in builts}
    atols = {name: t["selftest_atol"] for name, t in tolerances.items() if name in emitted and t}
    emulated = ctx.cross_check(target, emitted, ctx, atols) if ctx.cross_check is not None else {}
    variants = [_variant_entry(b, files.get(b.name), tolerances[b.name]) for b in builts]
    for entry in variants:
        if entry["variant"] in emulated:
            entry["fidelity_emulated"] = emulated[entry["variant"]]
    manifest: dict[str, Any] = {
        "schema": mf.SCHEMA,
        "target": target.to_dict(),
        "model": _model_info(ctx),
        **ctx.data.info,
        "toolchain": toolchain(),
        "measured_on": host(),
        "variants": variants,
        "selftest": _selftest(folder, ctx, emitted),
    }
    manifest["files"] = {p.name: sha256_file(p) for p in sorted(folder.iterdir())}
    if ctx.sign_key is not None:
        manifest = mf.attach_signature(manifest, ctx.sign_key)
    (folder / mf.MANIFEST_NAME).write_bytes(mf.dumps(manifest))
    return files
