"""Build one variant (int8 / fp16 / fp32 ONNX), gate it, fall back sensitive nodes if needed.

    build_int8: quantize ─► measure ─► holds? ─► done
                                  └─ no ─► rank nodes by added error ─► exclude 1, 2, 4 … worst
                                           nodes (at most half) ─► measure ─► holds? ─► done
                                                                           └─ never ─► rejected
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from compiler.data import TensorSet, sample_count, take
from compiler.fidelity import Budget, Fidelity, Outputs, measure
from compiler.quantize import Ranges, quantize, to_fp16
from compiler.schemes import QuantScheme
from compiler.sensitivity import rank_nodes

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

    @property
    def emitted(self) -> bool:
        return self.path is not None


@dataclass(frozen=True)
class GateInputs:
    eval_data: TensorSet
    reference: Outputs
    labels: np.ndarray | None
    budget: Budget


def _gate(path: Path, g: GateInputs) -> tuple[Fidelity, list[str]]:
    fid = measure(path, g.eval_data, g.reference, labels=g.labels)
    return fid, g.budget.violations(fid)


def build_plain(precision: str, prepared: Path, work_dir: Path, g: GateInputs) -> Built:
    """fp32 (the prepared graph itself) or fp16 (weights and compute in half precision)."""
    if precision == "fp32":
        path, quant = prepared, {"type": "fp32"}
    else:
        path = work_dir / "fp16.onnx"
        to_fp16(prepared, path)
        quant = {"type": "fp16", "io": "fp32", "reason": "target has fp16 arithmetic (asimdhp)"}
    fid, bad = _gate(path, g)
    if bad:
        return Built(precision, None, fid, quant, reason="; ".join(bad))
    return Built(precision, path, fid, quant)


def _fallback_sizes(candidates: int) -> list[int]:
    limit = max(candidates // 2, 1)
    sizes, k = [], 1
    while k < limit:
        sizes.append(k)
        k *= 2
    return [*sizes, limit]


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
    path = work_dir / f"int8-{scheme.key}.onnx"
    quant = {"type": "int8", "calibration_method": ranges.method, **scheme.to_dict()}
    quantize(prepared, path, ranges, scheme)
    fid, bad = _gate(path, g)
    if not bad:
        return Built("int8", path, fid, quant)
    if not fallback:
        return Built("int8", None, fid, quant, reason="; ".join(bad) + " (fallback disabled)")
    on_step(f"int8 {scheme.key}: {bad[0]}; ranking nodes by measured error")
    subset = take(calibration, slice(0, min(SENSITIVITY_SAMPLES, sample_count(calibration))))
    ranked = [r.node for r in rank_nodes(prepared, path, subset, work_dir)]
    for k in _fallback_sizes(len(ranked)):
        exclude = tuple(ranked[:k])
        on_step(f"int8 {scheme.key}: keeping {k} node(s) in fp32")
        quantize(prepared, path, ranges, scheme, exclude=exclude)
        fid, bad = _gate(path, g)
        if not bad:
            return Built("int8", path, fid, quant, fallback_nodes=list(exclude))
    return Built(
        "int8", None, fid, quant, fallback_nodes=list(ranked[: _fallback_sizes(len(ranked))[-1]]),
        reason=f"{'; '.join(bad)} even with the {len(ranked) // 2 or 1} most sensitive of "
        f"{len(ranked)} quantized nodes in fp32: ship fp32/fp16 or relax --max-drop / --min-cosine",
    )
