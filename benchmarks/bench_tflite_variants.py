"""The tflite-fp32 / tflite-fp16 / tflite-int8 artifacts of one LiteRT target, measured in LiteRT.

    .venv/bin/python -m benchmarks.bench_tflite_variants [--quick] [--models digits_cnn,efficientnet_lite0,...]

Per model and precision: file size and LiteRT latency relative to tflite-fp32 (batch 1, one
thread, runs interleaved so drift hits every file alike) with XNNPACK (LiteRT's default) and with
the builtin kernels only, and for int8 the top-1 agreement with the ONNX int8 artifact it shares
its scales with (run in onnxruntime) on the model's held-out samples. ``--quick``: fewer runs.
int8 is emitted whatever the compile's accuracy gate says (as in ``test_zoo_precisions``):
EfficientNet-Lite0's int8 agrees with its fp32 on ~80% of the zoo's low-confidence photo crops,
which the default gate refuses, and the question here is what the int8 file costs and runs like.
(``bench_tflite`` compares the fp32 lowering with onnx2tf instead.)
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from ai_edge_litert.interpreter import Interpreter, OpResolverType

from benchmarks._common import CACHE, Row, warm_up
from compiler import data as ds
from compiler.fidelity import Budget, run
from compiler.pipeline import CompileOptions, compile_model
from edgectl.targets import load_target
from tests import zoo

TARGET = "arm64-cortex-a76"  # lists int8, fp16 and fp32, and LiteRT
DEFAULT_MODELS = "digits_cnn,mnist_cnn,ppocr_cls,efficientnet_lite0"
PRECISIONS = ("fp32", "fp16", "int8")


def _interpreter(path: Path, builtin: bool) -> Interpreter:
    resolver = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES if builtin else OpResolverType.AUTO
    it = Interpreter(model_path=str(path), num_threads=1, experimental_op_resolver_type=resolver)
    it.allocate_tensors()
    return it


def interleaved_latency(paths: list[Path], x: np.ndarray, *, builtin: bool, rounds: int) -> list[float]:
    its = [_interpreter(p, builtin) for p in paths]
    index = [it.get_input_details()[0]["index"] for it in its]
    times: list[list[float]] = [[] for _ in paths]
    for it, i in zip(its, index, strict=True):
        it.set_tensor(i, x)
        it.invoke()
    for _ in range(rounds):
        for it, i, acc in zip(its, index, times, strict=True):
            it.set_tensor(i, x)
            t0 = time.perf_counter()
            it.invoke()
            acc.append(time.perf_counter() - t0)
    return [float(np.median(t)) * 1e6 for t in times]


def measure(model: zoo.ZooModel, work: Path, rounds: int) -> list[Row]:
    out = work / model.name
    options = CompileOptions(targets=(load_target(TARGET),), out_dir=out, calibration=model.calibration,
                             eval_data=model.eval, labels=model.labels,
                             budget=Budget(max_drop=100.0, min_cosine=0.0), fallback=False)
    result = compile_model(model.onnx_path, options)
    files = {r.variant: out / TARGET / r.file for r in result.rows if r.file}
    paths = [files[f"tflite-{p}"] for p in PRECISIONS]
    eval_data = ds.load_tensors(model.eval, ds.input_specs(onnx.load(str(model.onnx_path))), what="eval")
    x = next(iter(eval_data.values()))[:1]
    fast = interleaved_latency(paths, x, builtin=False, rounds=rounds)
    slow = interleaved_latency(paths, x, builtin=True, rounds=rounds)
    want = run(files["int8"], eval_data).values[0]
    got = run(files["tflite-int8"], eval_data).values[0]
    # top-1 only means something for a classifier; a detector's output is held by cosine.
    agreement = float((got.argmax(1) == want.argmax(1)).mean()) if model.task == "classify" else None
    cosine = float(got.ravel() @ want.ravel() / (np.linalg.norm(got) * np.linalg.norm(want)))
    base = paths[0].stat().st_size
    return [
        {"model": model.name, "precision": p, "size_ratio": path.stat().st_size / base, "xnnpack_us": f,
         "xnnpack_ratio": f / fast[0], "builtin_us": s, "builtin_ratio": s / slow[0],
         "int8_top1_vs_onnx_int8": agreement if p == "int8" else None,
         "int8_cosine_vs_onnx_int8": cosine if p == "int8" else None, "samples": len(want)}
        for p, path, f, s in zip(PRECISIONS, paths, fast, slow, strict=True)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--models", default=DEFAULT_MODELS)
    parser.add_argument("--quick", action="store_true", help="200 latency rounds instead of 2000")
    args = parser.parse_args()
    rounds = 200 if args.quick else 2000
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        warm_up(Path(tmp))
        for name in args.models.split(","):
            rows += measure(getattr(zoo, name)(CACHE), Path(tmp), rounds)
            print(f"done {name}", flush=True)
    print("ratios are against tflite-fp32 of the same model, measured in the same run")
    print(f"{'model':16} {'prec':5} {'size':>6} {'xnnpack µs':>11} {'ratio':>6} {'builtin µs':>11} {'ratio':>6} "
          f"{'top-1 vs ONNX int8':>19} {'cosine':>8}")
    for r in rows:
        agree = "" if r["int8_top1_vs_onnx_int8"] is None else f"{r['int8_top1_vs_onnx_int8']:.2%} of {r['samples']}"
        cosine = "" if r["int8_cosine_vs_onnx_int8"] is None else f"{r['int8_cosine_vs_onnx_int8']:.5f}"
        print(f"{r['model']:16} {r['precision']:5} {r['size_ratio']:6.3f} {r['xnnpack_us']:11.1f} "
              f"{r['xnnpack_ratio']:6.2f} {r['builtin_us']:11.1f} {r['builtin_ratio']:6.2f} {agree:>19} {cosine:>8}")


if __name__ == "__main__":
    main()
