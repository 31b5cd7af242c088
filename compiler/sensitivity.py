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

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from compiler.data import TensorSet
from compiler.quantize import _Reader


@dataclass(frozen=True)
class NodeError:
    node: str
    op_type: str
    added_nsr: float  # noise-to-signal power ratio this node adds to its output
    output_nsr: float


def _nsr(reference: Sequence[np.ndarray], noisy: Sequence[np.ndarray]) -> float:
    ref = np.concatenate([np.asarray(r, np.float64).ravel() for r in reference])
    got = np.concatenate([np.asarray(g, np.float64).ravel() for g in noisy])
    power = float(ref @ ref)
    return float(((ref - got) ** 2).sum() / power) if power > 0 else 0.0


def _activations(model: Path, data: TensorSet, work_dir: Path, tag: str) -> dict[str, list[np.ndarray]]:
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        modify_model_output_intermediate_tensors,
    )

    augmented = work_dir / f"debug-{tag}.onnx"
    modify_model_output_intermediate_tensors(str(model), str(augmented))
    acts = collect_activations(str(augmented), _Reader(data))
    augmented.unlink()
    return acts


def rank_nodes(float_model: Path, qdq_model: Path, data: TensorSet, work_dir: Path) -> list[NodeError]:
    """Nodes of ``float_model`` whose outputs the QDQ model quantizes, worst first."""
    from onnxruntime.quantization.qdq_loss_debug import create_activation_matching

    matching = create_activation_matching(
        _activations(qdq_model, data, work_dir, "qdq"),
        _activations(float_model, data, work_dir, "fp32"),
    )
    nsr = {
        name: _nsr(m["float"], m["post_qdq"])
        for name, m in matching.items()
        if "float" in m and m.get("post_qdq") is not None
    }
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
