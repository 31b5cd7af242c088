"""edgectl compile (every default target) vs onnxruntime's quantize_static (one target).

    .venv/bin/python -m benchmarks.bench_compile [--models digits_cnn,mnist_cnn,yolov8n_nudenet]

Both sides get the same calibration samples; the peer is what a user of onnxruntime would run
for one target: quant_pre_process, then quantize_static with its defaults (QDQ, s8s8, MinMax).
Printed per model: wall-time ratio (edgectl all targets / peer one target), int8/fp32 size,
int8/fp32 latency in onnxruntime (batch 1, one thread, runs interleaved so drift hits both),
and the top-1 drop in points on labelled data. Baselines are measured in the same run.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from benchmarks._common import run_models
from compiler import data as ds
from compiler.fidelity import session
from compiler.pipeline import CompileOptions, compile_model
from compiler.prepare import _inside
from edgectl.targets import all_targets
from tests import zoo

LATENCY_ROUNDS = 60
GOALS = {"size": 0.27, "latency": 0.6, "drop": 0.3}


def peer_quantize(model: Path, calib: ds.TensorSet, out: Path) -> float:
    from onnxruntime.quantization import quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from compiler.quantize import SampleReader

    t0 = time.perf_counter()
    pre = out.with_suffix(".pre.onnx")
    with _inside(out.parent):  # its failed shape inference leaves files in the current folder
        try:
            quant_pre_process(str(model), str(pre))
        except Exception:  # what a user does when symbolic shape inference gives up (YOLO does)
            quant_pre_process(str(model), str(pre), skip_symbolic_shape=True)
    quantize_static(str(pre), str(out), SampleReader(calib))
    return time.perf_counter() - t0


def interleaved_latency(paths: list[Path], feed: dict[str, np.ndarray]) -> list[float]:
    sessions = [session(p) for p in paths]
    times: list[list[float]] = [[] for _ in paths]
    for s in sessions:
        for _ in range(5):
            s.run(None, feed)
    for _ in range(LATENCY_ROUNDS):
        for s, acc in zip(sessions, times, strict=True):
            t0 = time.perf_counter()
            s.run(None, feed)
            acc.append(time.perf_counter() - t0)
    return [float(np.median(t)) * 1000 for t in times]


def top1(path: Path, x: ds.TensorSet, labels: np.ndarray) -> float:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    preds = [sess.run(None, {name: x[name][i : i + 1]})[0].argmax(1)[0] for i in range(len(labels))]
    return float(np.mean(np.array(preds) == labels))


def bench(model: zoo.ZooModel, work: Path) -> dict[str, float | str]:
    import onnx

    specs = ds.input_specs(onnx.load(str(model.onnx_path)))
    calib = ds.load_tensors(model.calibration, specs, what="calibration")
    evals = ds.load_tensors(model.eval, specs, what="eval")
    out = work / model.name
    t0 = time.perf_counter()
    options = CompileOptions(
        targets=tuple(all_targets()), out_dir=out, calibration=model.calibration, eval_data=model.eval,
        labels=model.labels,
    )
    result = compile_model(model.onnx_path, options)
    ours_s = time.perf_counter() - t0
    peer_path = work / f"{model.name}.peer.onnx"
    peer_s = peer_quantize(model.onnx_path, calib, peer_path)

    # This host is an x86-64 VNNI machine: its own target's artifact is the one to time here.
    folder = out / "x86_64-avx512-vnni"
    int8, fp32 = folder / f"{model.name}.int8.onnx", folder / f"{model.name}.fp32.onnx"
    feed = ds.take(evals, slice(0, 1))
    lat_fp32, lat_int8, lat_peer = interleaved_latency([fp32, int8, peer_path], feed)
    row: dict[str, float | str] = {
        "model": model.name,
        "params": model.params,
        "edgectl_s": ours_s,
        "peer_s": peer_s,
        "wall_ratio": ours_s / peer_s,
        "size_ratio": int8.stat().st_size / fp32.stat().st_size,
        "peer_size_ratio": peer_path.stat().st_size / fp32.stat().st_size,
        "latency_ratio": lat_int8 / lat_fp32,
        "peer_latency_ratio": lat_peer / lat_fp32,
        "fp32_ms": lat_fp32,
        "emitted": f"{sum(r.emitted for r in result.rows)}/{len(result.rows)}",
    }
    if model.labels is not None:
        labels = np.load(model.labels)
        base = top1(fp32, evals, labels)
        row["top1_drop_pts"] = (base - top1(int8, evals, labels)) * 100
        row["peer_top1_drop_pts"] = (base - top1(peer_path, evals, labels)) * 100
    return row


def main() -> None:
    rows = run_models(__doc__ or "", "digits_cnn,mnist_cnn,yolov8n_nudenet", lambda m, work: [bench(m, work)])
    cols = ["model", "params", "edgectl_s", "peer_s", "wall_ratio", "size_ratio", "peer_size_ratio",
            "latency_ratio", "peer_latency_ratio", "fp32_ms", "top1_drop_pts", "peer_top1_drop_pts", "emitted"]
    print(" | ".join(cols))
    for row in rows:
        print(" | ".join(_fmt(row.get(c, "-")) for c in cols))
    print(f"goals: size_ratio <= {GOALS['size']}, latency_ratio <= {GOALS['latency']} on the pretrained CNN, "
          f"top1_drop_pts <= {GOALS['drop']}")


def _fmt(v: object) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


if __name__ == "__main__":
    main()
