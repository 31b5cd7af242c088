"""edgectl's ONNX → TFLite lowering vs onnx2tf 2.x (``-tb flatbuffer_direct``), the same models.

    .venv/bin/python -m benchmarks.bench_tflite [--quick] [--models digits_cnn,...] [--peer-python PATH]

onnx2tf needs Python ≥ 3.12 and its own dependencies, so it runs in its own venv under
``~/.cache/edgectl-bench/onnx2tf-venv`` (created with pyenv's 3.12 on first use; never by the
test suite) through ``benchmarks/_onnx2tf_worker.py``. Both convert the same fp32 model for batch 1
and the image size of the zoo's eval data: edgectl the ONNX with those dims fixed, onnx2tf a copy of
the published file (it rewrites its input in place) with them in ``overwrite_input_shape``, one
process per model. Printed per model:

- conversion wall time of each, in process and after a warm-up (edgectl: fold + lower + serialize,
  median of 3; onnx2tf: one ``onnx2tf.convert`` after an untimed one of the same model), and their
  ratio edgectl/onnx2tf (goal ≤ 0.5);
- fidelity of each against onnxruntime on the eval samples: min cosine, max error relative to the
  output's largest magnitude, top-1 agreement for classifiers;
- LiteRT latency (XNNPACK, one thread, batch 1, median, runs interleaved) and the ratio
  edgectl/onnx2tf. onnx2tf's model takes NHWC input; it is fed the same pixels transposed.

int8 and fp16 are not compared here: onnx2tf's int8 path needs its own calibration set up.
``bench_tflite_variants`` measures edgectl's tflite-fp16/int8 against tflite-fp32 (size, latency)
and tflite-int8 against the ONNX int8 artifact (top-1 agreement).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from benchmarks._common import CACHE
from compiler.variants import static_shapes
from tests import zoo

DEFAULT_MODELS = "digits_cnn,mnist_cnn,mobilenet_v3_small,efficientnet_lite0,ppocr_cls,yolov8n_nudenet"
QUICK_MODELS = "digits_cnn,mnist_cnn,ppocr_cls"
PEER_VENV = Path.home() / ".cache" / "edgectl-bench" / "onnx2tf-venv"
PEER_PYTHON_BASE = Path("/root/.pyenv/versions/3.12.1/bin/python")
WORKER = Path(__file__).resolve().parent / "_onnx2tf_worker.py"
GOAL_WALL = 0.5
Row = dict[str, Any]


def peer_python(explicit: str | None) -> Path:
    """onnx2tf's interpreter: the one given, else the bench venv (created on first use)."""
    if explicit:
        return Path(explicit)
    python = PEER_VENV / "bin" / "python"
    if not python.exists():
        base = Path(os.environ.get("EDGECTL_BENCH_PY312", PEER_PYTHON_BASE))
        print(f"creating {PEER_VENV} with {base} (onnx2tf, onnx, onnxruntime)", flush=True)
        subprocess.run([str(base), "-m", "venv", str(PEER_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "onnx2tf>=2.4", "onnx", "onnxruntime"], check=True)
    return python


def samples(model: zoo.ZooModel, count: int) -> dict[str, np.ndarray]:
    with np.load(model.eval) as data:
        return {key: data[key][:count].astype(np.float32) for key in data.files}


def static_model(model: zoo.ZooModel, feed: dict[str, np.ndarray]) -> onnx.ModelProto:
    """The ONNX both converters get: eval image size, batch 1."""
    fixed = static_shapes(onnx.load(str(model.onnx_path)), {k: v[:1] for k, v in feed.items()})
    for info in fixed.graph.input:
        dims = info.type.tensor_type.shape.dim
        if dims and dims[0].dim_value <= 0:  # symbolic, or the -1 Paddle writes
            dims[0].dim_value = 1
    return onnx.shape_inference.infer_shapes(fixed)


def convert_edgectl(model: onnx.ModelProto, rounds: int) -> tuple[bytes | None, float, str]:
    from compiler.tflite import TfliteLoweringError, lower_to_tflite

    times, data = [], b""
    try:
        lower_to_tflite(model)  # warm-up: imports, onnx.reference's op table
        for _ in range(rounds):
            start = time.perf_counter()
            data = lower_to_tflite(model)
            times.append(time.perf_counter() - start)
    except TfliteLoweringError as exc:
        return None, float("nan"), str(exc)[:120]
    return data, float(np.median(times)), ""


def convert_peer(python: Path, job: dict[str, Any]) -> dict[str, Any]:
    """One model through onnx2tf in a fresh worker process (see _onnx2tf_worker.py)."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump([job], f)
    # onnx2tf runs onnxsim as a command; without the venv's bin on PATH it silently skips it.
    env = dict(os.environ, PATH=f"{python.parent}{os.pathsep}{os.environ.get('PATH', '')}")
    done = subprocess.run([str(python), str(WORKER), f.name], capture_output=True, text=True, check=False, env=env)
    os.unlink(f.name)
    results = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return results[-1] if results else {"error": f"worker died: {done.stderr.strip()[-200:]}"}


class Lite:
    """A LiteRT interpreter (XNNPACK, one thread) that takes NCHW samples whatever its input layout."""

    def __init__(self, path: Path) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=str(path), num_threads=1)
        self.interpreter.allocate_tensors()
        self.inputs = self.interpreter.get_input_details()
        self.outputs = self.interpreter.get_output_details()

    def feed(self, sample: dict[str, np.ndarray]) -> None:
        values = list(sample.values())
        for detail in self.inputs:
            name = detail["name"]
            x = sample[name] if name in sample else values[0]
            if tuple(detail["shape"]) != x.shape and x.ndim == 4:
                x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))  # onnx2tf's NHWC input
            self.interpreter.set_tensor(detail["index"], x)

    def run(self, sample: dict[str, np.ndarray]) -> list[np.ndarray]:
        self.feed(sample)
        self.interpreter.invoke()
        return [self.interpreter.get_tensor(d["index"]).copy() for d in self.outputs]


def as_reference_layout(got: np.ndarray, want: np.ndarray) -> np.ndarray | None:
    """``got`` in ``want``'s shape: as is, or with onnx2tf's channels-last moved back."""
    if got.shape == want.shape:
        return got
    for perm in ((0, 3, 1, 2), (0, 2, 1)):
        if got.ndim == len(perm) and got.transpose(perm).shape == want.shape:
            return got.transpose(perm)
    return None


def fidelity(lite: Lite, reference: list[list[np.ndarray]], feed: dict[str, np.ndarray]) -> dict[str, Any]:
    cosines, errors, agree, total = [], [], 0, 0
    for i, want_all in enumerate(reference):
        got_all = lite.run({k: v[i : i + 1] for k, v in feed.items()})
        # Match outputs by shape: onnx2tf may order them differently.
        for want in want_all:
            got = next((g for g in (as_reference_layout(g, want) for g in got_all) if g is not None), None)
            if got is None:
                return {"cosine": float("nan"), "rel_err": float("nan"), "top1": "shape?"}
            a, b = got.ravel().astype(np.float64), want.ravel().astype(np.float64)
            cosines.append(float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30)))
            errors.append(float(np.abs(a - b).max() / (np.abs(b).max() + 1e-30)))
            if want.ndim == 2:
                agree += int((got.argmax(-1) == want.argmax(-1)).sum())
                total += want.shape[0]
    return {"cosine": min(cosines), "rel_err": max(errors), "top1": f"{agree}/{total}" if total else "-"}


def interleaved_latency(lites: list[Lite], sample: dict[str, np.ndarray], rounds: int) -> list[float]:
    times: list[list[float]] = [[] for _ in lites]
    for lite in lites:
        lite.feed(sample)
        for _ in range(3):
            lite.interpreter.invoke()
    for _ in range(rounds):
        for lite, acc in zip(lites, times, strict=True):
            start = time.perf_counter()
            lite.interpreter.invoke()
            acc.append(time.perf_counter() - start)
    return [float(np.median(t)) * 1000 for t in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--models")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_MODELS}, fewer samples and runs")
    parser.add_argument("--peer-python", help="a Python ≥ 3.12 with onnx2tf installed")
    args = parser.parse_args()
    names = (args.models or (QUICK_MODELS if args.quick else DEFAULT_MODELS)).split(",")
    count, rounds, convert_rounds = (4, 20, 1) if args.quick else (16, 50, 3)
    import onnxruntime as ort

    python = peer_python(args.peer_python)
    CACHE.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench_tflite_"))
    rows: list[Row] = []
    try:
        prepared = []
        for name in names:
            entry = getattr(zoo, name)(CACHE)
            feed = samples(entry, count)
            model = static_model(entry, feed)
            path = work / f"{name}.onnx"
            onnx.save(model, str(path))
            # onnx2tf gets the model as published and the shapes on its command line, as its users do
            # (it fails on PP-OCR cls after onnx's shape inference has written value_info into it).
            peer_copy = work / f"{name}.peer.onnx"
            shutil.copyfile(entry.onnx_path, peer_copy)
            shapes = [f"{i.name}:" + ",".join(str(d.dim_value) for d in i.type.tensor_type.shape.dim)
                      for i in model.graph.input]
            prepared.append((name, entry, feed, model, {"onnx": str(peer_copy), "out": str(work / f"{name}_o2t"),
                                                        "shapes": shapes}))
        for name, _entry, feed, model, job in prepared:
            peer = convert_peer(python, job)
            session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
            reference = [session.run(None, {k: v[i : i + 1] for k, v in feed.items()}) for i in range(count)]
            data, ours_s, why = convert_edgectl(model, convert_rounds)
            row: Row = {"model": name, "edgectl_s": ours_s, "onnx2tf_s": peer.get("seconds", float("nan")),
                        "edgectl": why or "ok", "onnx2tf": peer.get("error", "ok")[:60]}
            row["wall_ratio"] = row["edgectl_s"] / row["onnx2tf_s"]
            lites: list[Lite] = []
            if data is not None:
                ours = work / f"{name}.edgectl.tflite"
                ours.write_bytes(data)
                lites.append(Lite(ours))
                row |= {f"edgectl_{k}": v for k, v in fidelity(lites[-1], reference, feed).items()}
            if "tflite" in peer:
                try:
                    lites.append(Lite(Path(peer["tflite"])))
                    row |= {f"onnx2tf_{k}": v for k, v in fidelity(lites[-1], reference, feed).items()}
                except (ValueError, RuntimeError) as exc:
                    row["onnx2tf"] = f"LiteRT: {str(exc)[:50]}"
            if len(lites) == 2:
                ms = interleaved_latency(lites, {k: v[:1] for k, v in feed.items()}, rounds)
                row |= {"edgectl_ms": ms[0], "onnx2tf_ms": ms[1], "latency_ratio": ms[0] / ms[1]}
            rows.append(row)
            print(f"done {name}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _print(rows)


def _print(rows: list[Row]) -> None:
    cols = ["model", "edgectl_s", "onnx2tf_s", "wall_ratio", "edgectl_cosine", "onnx2tf_cosine", "edgectl_rel_err",
            "onnx2tf_rel_err", "edgectl_top1", "onnx2tf_top1", "edgectl_ms", "onnx2tf_ms", "latency_ratio"]
    print(" | ".join(cols))
    for row in rows:
        print(" | ".join(_fmt(row.get(c, "-")) for c in cols))
    print("converts: " + "; ".join(f"{r['model']}: edgectl {r['edgectl']}, onnx2tf {r['onnx2tf']}" for r in rows))
    print(f"goal: wall_ratio <= {GOAL_WALL}; latency_ratio is printed as measured (LiteRT + XNNPACK, 1 thread)")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.1e}"
    return str(value)


if __name__ == "__main__":
    main()
