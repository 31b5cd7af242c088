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
# output of the same artifact to within this much of the artifact's own error vs fp32.
SELFTEST_ERROR_FACTOR = 2.0
# fp16 ONNX runs in half precision on ARMv8.2 (onnxruntime's fp16 kernels accumulate in fp16)
# but in fp32 after casts on x86: under qemu the digits CNN's fp16 error vs fp32 was 3.8× this
# host's (0.0220 vs 0.0058, `edgectl compile --verify-on arm64`), so 2× would fail a real Pi 5.
SELFTEST_ERROR_FACTORS = {"fp16": 8.0}
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


CrossCheck = Callable[[Target, dict[str, Path], ManifestContext], dict[str, dict[str, Any]]]


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


def selftest_atol(precision: str, host_max_abs: float) -> float:
    """How far a device's output of an artifact may be from this host's: a multiple of the
    artifact's own largest float error vs fp32 here (``host_max_abs``)."""
    return max(SELFTEST_MIN_ATOL, SELFTEST_ERROR_FACTORS.get(precision, SELFTEST_ERROR_FACTOR) * host_max_abs)


def _variant_entry(built: Built, file: str | None) -> dict[str, Any]:
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
    if built.fidelity is not None:
        worst = max((e.max_abs for e in built.fidelity.outputs.values() if e.agreement is None), default=0.0)
        entry["selftest_atol"] = selftest_atol(built.precision, worst)
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
    emulated = ctx.cross_check(target, emitted, ctx) if ctx.cross_check is not None else {}
    variants = [_variant_entry(b, files.get(b.name)) for b in builts]
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
