"""Graph preparation before calibration: stable node names, shape inference, fusion.

onnxruntime's ``quant_pre_process`` runs symbolic shape inference and its basic graph
optimizations (BatchNorm folded into Conv, constant folding, redundant nodes removed). The
result is the fp32 artifact and the graph every other variant is quantized from.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import onnx

from edgectl.errors import ModelLoadError


def name_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give unnamed nodes deterministic names: fallback reports and exclusions refer to them."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    taken = {n.name for n in out.graph.node if n.name}
    for i, node in enumerate(out.graph.node):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)
    return out


@contextmanager
def _inside(folder: Path) -> Iterator[None]:
    previous = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(previous)


def prepare(model: onnx.ModelProto, work_dir: Path) -> tuple[Path, Path]:
    """Write the source graph and the prepared fp32 graph; returns (source, prepared) paths."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    work_dir = work_dir.resolve()
    source = work_dir / "source.onnx"
    prepared = work_dir / "prepared.onnx"
    onnx.save(name_nodes(model), str(source))
    logging.getLogger().setLevel(logging.ERROR)
    # When symbolic shape inference gives up it dumps its partial model into the current folder
    # (sym_shape_infer_temp.onnx plus external-data files); keep that inside the work folder.
    with _inside(work_dir):
        try:
            quant_pre_process(str(source), str(prepared), skip_symbolic_shape=False)
        except Exception as exc:  # symbolic shape inference trips on exotic graphs; retry without it
            try:
                quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
            except Exception as exc2:
                raise ModelLoadError(
                    f"onnxruntime cannot optimize this graph ({exc2.__class__.__name__}: {str(exc2)[:160]}); "
                    "check that the model runs in onnxruntime"
                ) from exc
    # Optimization may drop names of fused nodes' replacements; name them again deterministically.
    onnx.save(name_nodes(onnx.load(str(prepared))), str(prepared))
    return source, prepared
