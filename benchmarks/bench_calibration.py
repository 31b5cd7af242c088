"""Which calibration method should be the default? Measured on the test models.

    .venv/bin/python -m benchmarks.bench_calibration [--models ...]

For each model and each method (MinMax, Percentile, Entropy) the int8 artifacts of an x86 VNNI
target (u8s8) and an ARM target (s8s8) are built without node fallback and gated on held-out
data; printed: top-1 agreement with fp32, labelled accuracy drop, least output cosine, and the
compile time, with MinMax (onnxruntime's default) as the baseline of each ratio.
"""

from __future__ import annotations

import time
from pathlib import Path

from benchmarks._common import run_models
from compiler.fidelity import Budget
from compiler.pipeline import CompileOptions, compile_model
from compiler.quantize import CALIBRATION_METHODS
from edgectl.targets import load_target
from tests import zoo

TARGETS = ("x86_64-avx512-vnni", "arm64-cortex-a72")


def run(model: zoo.ZooModel, method: str, out: Path) -> list[dict[str, object]]:
    options = CompileOptions(
        targets=tuple(load_target(t) for t in TARGETS), out_dir=out, calibration=model.calibration,
        eval_data=model.eval, labels=model.labels, calibration_method=method, fallback=False,
        budget=Budget(max_drop=100, min_cosine=-1),  # measure, do not gate
    )
    t0 = time.perf_counter()
    result = compile_model(model.onnx_path, options)
    seconds = time.perf_counter() - t0
    rows = []
    for r in result.rows:
        if r.precision != "int8" or r.fidelity is None:
            continue
        fid = r.fidelity
        drop = None
        if fid["accuracy"] is not None:
            drop = (fid["reference_accuracy"] - fid["accuracy"]) * 100
        rows.append({
            "model": model.name, "target": r.target, "method": method, "seconds": seconds,
            "top1": fid["top1_agreement"], "drop_pts": drop,
            "min_cosine": min(o["cosine"] for o in fid["outputs"].values()),
        })
    return rows


def measure(model: zoo.ZooModel, work: Path) -> list[dict[str, object]]:
    return [row for method in CALIBRATION_METHODS for row in run(model, method, work / f"{model.name}-{method}")]


def main() -> None:
    rows = run_models(__doc__ or "", "digits_cnn,mnist_cnn,digits_mlp,yolov8n_nudenet,ppocr_cls", measure)
    base = {(r["model"], r["target"]): r for r in rows if r["method"] == "minmax"}
    print("model | target | method | top1 | drop_pts | min_cosine | time/minmax")
    for r in rows:
        b = base[(r["model"], r["target"])]
        print(" | ".join(str(x) for x in (
            r["model"], r["target"], r["method"], _f(r["top1"]), _f(r["drop_pts"]), _f(r["min_cosine"], 5),
            _f(r["seconds"] / b["seconds"]),
        )))
    wins = {m: 0 for m in CALIBRATION_METHODS}
    for key in base:
        group = [r for r in rows if (r["model"], r["target"]) == key]
        best = max(group, key=lambda r: (r["top1"] or 0, r["min_cosine"]))
        wins[str(best["method"])] += 1
    print("best (top-1 agreement, then cosine) per model×target:", wins)


def _f(v: object, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


if __name__ == "__main__":
    main()
