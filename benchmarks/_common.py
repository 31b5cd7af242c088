"""Shared by the benchmarks: the zoo cache and a warm-up compile."""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from compiler.pipeline import CompileOptions, compile_model
from edgectl.targets import load_target
from tests import zoo

CACHE = Path(__file__).resolve().parent.parent / ".cache" / "zoo"


def warm_up(work: Path) -> None:
    """One untimed compile, so imports and first-call costs do not land on the first model."""
    CACHE.mkdir(parents=True, exist_ok=True)
    model = zoo.digits_cnn(CACHE)
    options = CompileOptions(
        targets=(load_target("arm64-cortex-a72"),), out_dir=work / "warm-up", calibration=model.calibration
    )
    compile_model(model.onnx_path, options)


Row = dict[str, Any]


def run_models(doc: str, default_models: str, measure: Callable[[zoo.ZooModel, Path], list[Row]]) -> list[Row]:
    """Parse ``--models``, warm up, then ``measure`` each zoo model in a scratch folder."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--models", default=default_models)
    args = parser.parse_args()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        warm_up(Path(tmp))
        for name in args.models.split(","):
            rows += measure(getattr(zoo, name)(CACHE), Path(tmp))
            print(f"done {name}", flush=True)
    return rows
