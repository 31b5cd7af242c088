"""Build one variant (int8 / fp16 / fp32 ONNX), gate it, fall back sensitive nodes if needed.

    build_int8: quantize ─► measure ─► holds? ─► done
                                  └─ no ─► rank nodes by added error ─► exclude 1, 2, 4 … worst
                                           nodes (at most half) ─► measure ─► holds? ─► done
                                                                           └─ never ─► rejected
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from compiler.compact import compact_file
from compiler.data import TensorSet, sample_count, take
from compiler.fidelity import Budget, Fidelity, Outputs, error_summary, measure
from compiler.quantize import Ranges, quantize, to_fp16
from compiler.schemes import QuantScheme
from compiler.sensitivity import rank_nodes
from edgectl.hashing import sha256_file

# Per-node error is measured on at most this many calibration samples (never on eval ones).
SENSITIVITY_SAMPLES = 64


@dataclass
class Built:
    """A variant as built and measured; ``path`` is None when it did not meet the budget."""

    precision: str
    path: Path | None
    fidelity: Fidelity | None
    quantization: dict[str, Any]
    fallback_nodes: list[str] = field(default_factory=list)
    reason: str = ""
    format: str = "onnx"
    skipped: bool = False  # the backend cannot express this graph: listed, not a gate failure

    @property
    def emitted(self) -> bool:
        return self.path is not None

    @property
    def name(self) -> str:
        """``int8``, ``fp16``, ``fp32`` for ONNX; ``tflite-fp32`` and so on for TFLite."""
        return self.precision if self.format == "onnx" else f"{self.format}-{self.precision}"

    @property
    def runtime(self) -> str:
        return "onnxruntime" if self.format == "onnx" else "litert"


@dataclass(frozen=True)
class GateInputs:
    eval_data: TensorSet
    reference: Outputs
    labels: np.ndarray | None
    budget: Budget


class VariantFailure(Exception):
    """A converter or onnxruntime could not build or run a variant: it is rejected, not fatal."""


def _gate(path: Path, g: GateInputs) -> tuple[Fidelity, list[str]]:
    try:
        fid = measure(path, g.eval_data, g.reference, labels=g.labels)
    except Exception as exc:  # onnxruntime raises bare pybind classes; translate at the boundary
        runtime = "LiteRT" if path.suffix == ".tflite" else "onnxruntime"
        raise VariantFailure(f"{runtime} cannot run it ({error_summary(exc)})") from exc
    return fid, g.budget.violations(fid)


def build_plain(precision: str, prepared: Path, work_dir: Path, g: GateInputs) -> Built:
    """fp32 (the prepared graph itself) or fp16 (weights and compute in half precision)."""
    path = work_dir / f"{precision}.onnx"
    quant: dict[str, Any] = {"type": "fp32"}
    try:
        if precision == "fp32":
            compact_file(prepared, path)
        else:
            quant = {"type": "fp16", "io": "fp32", "reason": "target has fp16 arithmetic (asimdhp)"}
            raw = work_dir / "fp16.raw.onnx"
            try:
                to_fp16(prepared, raw)
            except Exception as exc:
                raise VariantFailure(f"fp16 conversion failed ({error_summary(exc)})") from exc
            compact_file(raw, path)
        fid, bad = _gate(path, g)
    except VariantFailure as exc:
        return Built(precision, None, None, quant, reason=str(exc))
    if bad:
        return Built(precision, None, fid, quant, reason="; ".join(bad))
    return Built(precision, path, fid, quant)


def static_shapes(model: onnx.ModelProto, data: TensorSet) -> onnx.ModelProto:
    """Fix the non-batch input dims the graph leaves symbolic to the data's, then re-infer.

    TFLite kernels are planned for static shapes (only the batch may vary); an image model
    exported with dynamic height and width is compiled for the size it is fed.
    """
    fixed = False
    for value in model.graph.input:
        if value.name not in data:
            continue
        for axis, dim in enumerate(value.type.tensor_type.shape.dim):
            if axis > 0 and not dim.HasField("dim_value"):
                dim.dim_value = int(data[value.name].shape[axis])
                fixed = True
    if not fixed:
        return model
    del model.graph.value_info[:]
    return onnx.shape_inference.infer_shapes(model, data_prop=True)


def build_tflite(
    precision: str, prepared: Path, work_dir: Path, g: GateInputs, *, qdq: Built | None = None, io: str = "float"
) -> Built:
    """The TFLite lowering, run in LiteRT and gated like the others.

    fp32 and fp16 lower the prepared graph; int8 lowers ``qdq``, the ONNX int8 variant of the same
    target, so both formats carry one set of scales (its sha256 goes in the quantization info).
    """
    from compiler.tflite import TfliteLoweringError, lower_to_tflite

    quant: dict[str, Any] = {"type": precision, "format": "tflite"}
    source, fallback, name = prepared, [], f"{precision}.tflite"
    if precision == "fp16":
        quant |= {"weights": "float16", "compute": "float32", "io": "fp32"}
    elif precision == "int8":
        if qdq is None or qdq.path is None:
            why = f": {qdq.reason}" if qdq is not None and qdq.reason else ""
            return Built(precision, None, None, quant, format="tflite", skipped=True,
                         reason=f"skipped: no int8 QDQ graph to lower (the ONNX int8 variant was not emitted{why})")
        source, fallback, name = qdq.path, list(qdq.fallback_nodes), f"{qdq.path.stem}.tflite"
        quant |= {
            "io": io,
            **{k: v for k, v in qdq.quantization.items() if k not in ("type", "format")},
            "shares_scales_with": {"variant": qdq.name, "format": qdq.format, "sha256": sha256_file(qdq.path)},
        }
    path = work_dir / name
    try:
        model = static_shapes(onnx.load(str(source)), g.eval_data)
        path.write_bytes(lower_to_tflite(model, precision=precision, io=io))
    except TfliteLoweringError as exc:
        return Built(precision, None, None, quant, fallback, reason=f"skipped: {exc}", format="tflite", skipped=True)
    try:
        fid, bad = _gate(path, g)
    except VariantFailure as exc:
        return Built(precision, None, None, quant, fallback, reason=str(exc), format="tflite")
    if bad:
        return Built(precision, None, fid, quant, fallback, reason="; ".join(bad), format="tflite")
    return Built(precision, path, fid, quant, fallback, format="tflite")


def _fallback_sizes(candidates: int) -> list[int]:
    limit = max(candidates // 2, 1)
    sizes, k = [], 1
    while k < limit:
        sizes.append(k)
        k *= 2
    return [*sizes, limit]


@dataclass(frozen=True)
class _Int8Job:
    prepared: Path
    ranges: Ranges
    calibration: TensorSet
    work_dir: Path
    gate: GateInputs
    fallback: bool
    on_step: Callable[[str], None]

    def make(self, scheme: QuantScheme, exclude: tuple[str, ...] = ()) -> tuple[Path, Path]:
        raw = self.work_dir / f"int8-{scheme.key}.raw.onnx"
        path = self.work_dir / f"int8-{scheme.key}.onnx"
        try:
            quantize(self.prepared, raw, self.ranges, scheme, exclude=exclude)
        except Exception as exc:  # the quantizer's own errors: reject this scheme, keep going
            raise VariantFailure(f"onnxruntime's quantizer failed ({error_summary(exc)})") from exc
        compact_file(raw, path)
        return raw, path


def _build_int8(job: _Int8Job, scheme: QuantScheme) -> Built:
    quant = {"type": "int8", "calibration_method": job.ranges.method, **scheme.to_dict()}
    raw, path = job.make(scheme)
    fid, bad = _gate(path, job.gate)
    if not bad:
        return Built("int8", path, fid, quant)
    if not job.fallback:
        return Built("int8", None, fid, quant, reason="; ".join(bad) + " (fallback disabled)")
    job.on_step(f"int8 {scheme.key}: {bad[0]}; ranking nodes by measured error")
    subset = take(job.calibration, slice(0, min(SENSITIVITY_SAMPLES, sample_count(job.calibration))))
    # Ranking matches tensors by the quantizer's names, so it reads the graph before compaction.
    try:
        ranked = [r.node for r in rank_nodes(job.prepared, raw, subset, job.work_dir)]
    except Exception as exc:  # onnxruntime runs the debug graph unoptimized, which can fail
        raise VariantFailure(f"per-node error could not be measured ({error_summary(exc)})") from exc
    if not ranked:
        return Built("int8", None, fid, quant, reason="; ".join(bad) + " (no quantized node to fall back)")
    for k in _fallback_sizes(len(ranked)):
        exclude = tuple(ranked[:k])
        job.on_step(f"int8 {scheme.key}: keeping {k} node(s) in fp32")
        raw, path = job.make(scheme, exclude)
        fid, bad = _gate(path, job.gate)
        if not bad:
            return Built("int8", path, fid, quant, fallback_nodes=list(exclude))
    return Built(
        "int8", None, fid, quant, fallback_nodes=list(exclude),
        reason=f"{'; '.join(bad)} even with the {len(exclude)} most sensitive of "
        f"{len(ranked)} quantized nodes in fp32: ship fp32/fp16 or relax --max-drop / --min-cosine",
    )


def build_int8(
    prepared: Path,
    ranges: Ranges,
    scheme: QuantScheme,
    calibration: TensorSet,
    work_dir: Path,
    g: GateInputs,
    *,
    fallback: bool = True,
    on_step: Callable[[str], None] = lambda _: None,
) -> Built:
    """The int8 variant for ``scheme``; per-tensor weights when per-channel cannot be built or run."""
    job = _Int8Job(prepared, ranges, calibration, work_dir, g, fallback, on_step)
    try:
        return _build_int8(job, scheme)
    except VariantFailure as exc:
        if not scheme.per_channel:
            quant = {"type": "int8", "calibration_method": ranges.method, **scheme.to_dict()}
            return Built("int8", None, None, quant, reason=str(exc))
        on_step(f"int8 {scheme.key}: {exc}; retrying with per-tensor weights")
        per_tensor = replace(scheme, per_channel=False, reason=f"{scheme.reason}; per-channel weights failed: {exc}")
        try:
            return _build_int8(job, per_tensor)
        except VariantFailure as exc2:
            quant = {"type": "int8", "calibration_method": ranges.method, **per_tensor.to_dict()}
            return Built("int8", None, None, quant, reason=f"per-channel: {exc}; per-tensor: {exc2}")
