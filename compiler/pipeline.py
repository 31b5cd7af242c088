"""``compile_model``: one source model → gated, signed artifacts for every target.

    load (frontend) ─► prepare (names, shapes, fusion) ─► data (calibration / held-out eval)
        ─► fp32 reference ─► calibrate once ─► per target × precision: build + gate
        (identical schemes are built once and shared) ─► write folders + signed manifests

    >>> result = compile_model(Path("model.onnx"), CompileOptions(
    ...     targets=(load_target("arm64-cortex-a76"),), calibration=Path("calib.npz"),
    ...     out_dir=Path("out")))
    >>> result.exit_code
    0
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from compiler import data as datasets
from compiler.fidelity import Budget, Outputs, error_summary, run
from compiler.frontends import LoadedModel, load_model
from compiler.manifest_builder import CrossCheck, ManifestContext, write_target
from compiler.output import publish, staging
from compiler.prepare import prepare
from compiler.quantize import DEFAULT_CALIBRATION_METHOD, calibrate
from compiler.schemes import scheme_for
from compiler.variants import Built, GateInputs, build_int8, build_plain, build_tflite
from edgectl.errors import DataError, ModelLoadError
from edgectl.signing import load_private_key
from edgectl.targets import Target

# What the TFLite backend lowers: fp32, fp16 weights, and int8 from the target's ONNX QDQ graph.
TFLITE_PRECISIONS = ("fp32", "fp16", "int8")
# Without --eval, this share of the calibration samples is held out for the fidelity gate.
HOLDOUT_FRACTION = 0.25


@dataclass(frozen=True)
class CompileOptions:
    targets: tuple[Target, ...]
    out_dir: Path
    calibration: Path | None = None
    random_calibration: bool = False
    random_samples: int = 64
    eval_data: Path | None = None
    labels: Path | None = None
    budget: Budget = field(default_factory=Budget)
    calibration_method: str = DEFAULT_CALIBRATION_METHOD
    sign_key: Path | None = None
    input_shape: tuple[int, ...] | None = None
    fallback: bool = True
    tflite_io: str = "float"  # int8 TFLite inputs/outputs: "float" (QUANTIZE/DEQUANTIZE inside) or "int8"
    cross_check: CrossCheck | None = None  # e.g. compiler.crossarch.EmulatedCheck (--verify-on arm64)


@dataclass(frozen=True)
class VariantRow:
    target: str
    variant: str  # int8 | fp16 | fp32 (ONNX) | tflite-fp32
    precision: str
    format: str
    emitted: bool
    skipped: bool
    file: str | None
    size_ratio: float | None
    latency_ratio: float | None
    fidelity: dict[str, Any] | None
    fallback_nodes: list[str]
    reason: str


@dataclass(frozen=True)
class CompileResult:
    model: str
    out_dir: Path
    rows: list[VariantRow]
    written: list[str]

    @property
    def exit_code(self) -> int:
        return 0 if all(r.emitted or r.skipped for r in self.rows) else 3

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "out_dir": str(self.out_dir),
            "targets_written": self.written,
            "variants": [r.__dict__ for r in self.rows],
            "exit_code": self.exit_code,
        }


@dataclass(frozen=True)
class DataSets:
    calibration: datasets.TensorSet
    eval_data: datasets.TensorSet
    labels: np.ndarray | None
    info: dict[str, Any]


def load_datasets(options: CompileOptions, specs: list[datasets.InputSpec]) -> DataSets:
    if options.calibration is None and not options.random_calibration:
        raise DataError(
            "no calibration data: pass --calibration FILE (or --random-calibration to accept random inputs)"
        )
    if options.random_calibration:
        calib = datasets.random_tensors(specs, options.random_samples, seed=0)
        calib_info = {"source": "random", "random": True}
    else:
        assert options.calibration is not None
        calib = datasets.load_tensors(options.calibration, specs, what="calibration")
        calib_info = {"source": options.calibration.name, "random": False}
    if options.eval_data is not None:
        eval_data = datasets.load_tensors(options.eval_data, specs, what="eval")
        eval_info: dict[str, Any] = {"source": options.eval_data.name}
    elif options.random_calibration:
        eval_data = datasets.random_tensors(specs, options.random_samples, seed=1)
        eval_info = {"source": "random"}
    else:
        n = datasets.sample_count(calib)
        if n < 2:
            raise DataError("one calibration sample cannot also give held-out eval samples: pass --eval")
        held = max(1, int(n * HOLDOUT_FRACTION))
        eval_data = datasets.take(calib, slice(n - held, n))
        calib = datasets.take(calib, slice(0, n - held))
        eval_info = {"source": f"last {held} of the calibration samples, held out"}
    eval_data, dropped = datasets.drop_overlap(eval_data, calib)
    if datasets.sample_count(eval_data) == 0:
        raise DataError("every eval sample also occurs in the calibration data: pass held-out --eval data")
    labels = None
    if options.labels is not None:
        if options.eval_data is None:
            raise DataError("--labels describe --eval samples: pass --eval too")
        if dropped:
            raise DataError(f"{dropped} eval samples also occur in the calibration data: remove them from --eval")
        labels = datasets.load_labels(options.labels, datasets.sample_count(eval_data))
    info = {
        "calibration": {
            **calib_info,
            "method": options.calibration_method,
            "samples": datasets.sample_count(calib),
            "sha256": datasets.tensors_sha256(calib),
        },
        "evaluation": {
            **eval_info,
            "samples": datasets.sample_count(eval_data),
            "sha256": datasets.tensors_sha256(eval_data),
            "dropped_overlapping_samples": dropped,
            "labelled": labels is not None,
        },
    }
    return DataSets(calib, eval_data, labels, info)


def _row(target: Target, built: Built, fp32: Built | None, file: str | None) -> VariantRow:
    fid = built.fidelity
    base = fp32.fidelity if fp32 is not None else None
    size_ratio = latency_ratio = None
    if fid is not None and base is not None:
        size_ratio = fid.size_bytes / base.size_bytes
        latency_ratio = fid.latency_p50_ms / base.latency_p50_ms if base.latency_p50_ms > 0 else None
    return VariantRow(
        target.name, built.name, built.precision, built.format, built.emitted, built.skipped, file, size_ratio,
        latency_ratio,
        fid.to_dict() if fid else None, built.fallback_nodes, built.reason,
    )


def _reference(model: Path, eval_data: datasets.TensorSet, name: str) -> Outputs:
    try:
        return run(model, eval_data)
    except Exception as exc:  # onnxruntime's own error classes; translated at this boundary
        raise ModelLoadError(
            f"onnxruntime cannot run {name} on the eval samples ({error_summary(exc)}): check the model runs in "
            "onnxruntime and the data matches its inputs"
        ) from exc


def compile_model(
    source: Path | LoadedModel,
    options: CompileOptions,
    on_step: Callable[[str], None] = lambda _: None,
) -> CompileResult:
    # Cheap checks first, so a bad key or data file fails before minutes of work.
    signer = load_private_key(options.sign_key) if options.sign_key is not None else None
    loaded = source if isinstance(source, LoadedModel) else load_model(source, input_shape=options.input_shape)
    specs = datasets.input_specs(loaded.model)
    data = load_datasets(options, specs)
    with staging(options.out_dir) as stage, tempfile.TemporaryDirectory(prefix="edgectl-") as tmp:
        work = Path(tmp)
        on_step("preparing graph (shape inference, fusion)")
        source_path, prepared = prepare(loaded.model, work)
        on_step("running the fp32 reference on held-out samples")
        reference = _reference(source_path, data.eval_data, loaded.source_name)
        gate = GateInputs(data.eval_data, reference, data.labels, options.budget)
        on_step(f"calibrating ({options.calibration_method}, {datasets.sample_count(data.calibration)} samples)")
        ranges = calibrate(prepared, data.calibration, options.calibration_method, work)
        cache: dict[str, Built] = {}

        def variant(target: Target, precision: str, fmt: str = "onnx") -> Built:
            scheme = scheme_for(target) if precision == "int8" else None
            key = f"int8-{scheme.key}" if scheme else precision
            key = key if fmt == "onnx" else f"{fmt}-{key}"
            if key not in cache:
                # tflite-int8 lowers the target's ONNX int8 (QDQ) graph: build that first.
                qdq = variant(target, "int8") if fmt == "tflite" and precision == "int8" else None
                on_step(f"building and validating {key}")
                if fmt == "tflite":
                    cache[key] = build_tflite(precision, prepared, work, gate, qdq=qdq, io=options.tflite_io)
                elif scheme is None:
                    cache[key] = build_plain(precision, prepared, work, gate)
                else:
                    cache[key] = build_int8(
                        prepared, ranges, scheme, data.calibration, work, gate,
                        fallback=options.fallback, on_step=on_step,
                    )
            return cache[key]

        fp32 = variant(options.targets[0], "fp32")
        ctx = ManifestContext(loaded, specs, reference, data, signer, options.cross_check)
        rows: list[VariantRow] = []
        written: list[str] = []
        for target in options.targets:
            builts = [variant(target, p) for p in target.precisions]
            if "litert" in target.runtimes:
                builts += [variant(target, p, "tflite") for p in target.precisions if p in TFLITE_PRECISIONS]
            files = write_target(stage / target.name, target, builts, ctx)
            rows += [_row(target, b, fp32, files.get(b.name)) for b in builts]
            if files:
                written.append(target.name)
            else:
                (stage / target.name).rmdir()
        on_step("publishing")
        publish(stage, options.out_dir, written)
    return CompileResult(loaded.source_name, options.out_dir, rows, written)
