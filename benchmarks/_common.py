"""Shared by the benchmarks: the zoo cache and a warm-up compile."""

from __future__ import annotations

from pathlib import Path

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
