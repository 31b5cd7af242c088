"""Rank quantized nodes by the error each one adds, so the gate falls back the worst to fp32.

A node's own error is measured, not guessed: both the fp32 and the QDQ model are run on the
same calibration samples with every intermediate tensor exposed (onnxruntime's qdq_loss_debug),
and for each node the noise-to-signal ratio of its output is compared with the worst of its
inputs. The increase is what quantizing that node (its weights and its output) costs.

    >>> ranked = rank_nodes(prepared, int8_model, calibration_data, work_dir)
    >>> [r.node for r in ranked[:3]]
    ['/conv1/Conv', '/fc/Gemm', '/conv2/Conv']
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from compiler.data import TensorSet, sample_count, take
from compiler.quantize import SampleReader


@dataclass(frozen=True)
class NodeError:
    node: str
    op_type: str
    added_nsr: float  # noise-to-signal power ratio this node adds to its output
    output_nsr: float


# Activations are collected this many samples at a time: every intermediate tensor of two
# models is held at once, which for PP-OCR's recogniser is hundreds of MB per sample.
CHUNK = 4


def _augment(model: Path, work_dir: Path, tag: str) -> Path:
    from onnxruntime.quantization.qdq_loss_debug import modify_model_output_intermediate_tensors

    augmented = work_dir / f"debug-{tag}.onnx"
    modify_model_output_intermediate_tensors(str(model), str(augmented))
    return augmented


def _error_powers(float_aug: Path, qdq_aug: Path, data: TensorSet) -> dict[str, tuple[float, float]]:
    """Per quantized tensor: (sum of squared error, sum of squared signal) over all samples."""
    from onnxruntime.quantization.qdq_loss_debug import collect_activations, create_activation_matching

    sums: dict[str, list[float]] = {}
    n = sample_count(data)
    for start in range(0, n, CHUNK):
        part = take(data, slice(start, min(start + CHUNK, n)))
        matching = create_activation_matching(
            collect_activations(str(qdq_aug), SampleReader(part)),
            collect_activations(str(float_aug), SampleReader(part)),
        )
        for name, m in matching.items():
            if "float" not in m or m.get("post_qdq") is None:
                continue
            acc = sums.setdefault(name, [0.0, 0.0])
            for ref, got in zip(m["float"], m["post_qdq"], strict=True):
                r = np.asarray(ref, np.float64).ravel()
                acc[0] += float(((r - np.asarray(got, np.float64).ravel()) ** 2).sum())
                acc[1] += float(r @ r)
    return {k: (v[0], v[1]) for k, v in sums.items()}


def rank_nodes(float_model: Path, qdq_model: Path, data: TensorSet, work_dir: Path) -> list[NodeError]:
    """Nodes of ``float_model`` whose outputs the QDQ model quantizes, worst first."""
    float_aug, qdq_aug = _augment(float_model, work_dir, "fp32"), _augment(qdq_model, work_dir, "qdq")
    try:
        powers = _error_powers(float_aug, qdq_aug, data)
    finally:
        float_aug.unlink()
        qdq_aug.unlink()
    nsr = {name: err / power if power > 0 else 0.0 for name, (err, power) in powers.items()}
    ranked = []
    for node in onnx.load(str(float_model), load_external_data=False).graph.node:
        outs = [nsr[o] for o in node.output if o in nsr]
        if not outs:
            continue
        worst_in = max((nsr.get(i, 0.0) for i in node.input), default=0.0)
        out = max(outs)
        ranked.append(NodeError(node.name, node.op_type, max(out - worst_in, 0.0), out))
    ranked.sort(key=lambda e: (-e.added_nsr, e.node))
    return ranked
