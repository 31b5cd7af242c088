"""The half of ``compiler.crossarch`` that runs inside the emulated userland.

It imports only numpy and the runtimes (onnxruntime, ai_edge_litert), never edgectl, so the
userland needs nothing else. It runs each artifact on the eval samples the way
``compiler.fidelity.run`` does (the model's own batch size, one thread) and writes the outputs
back::

    python crossarch_guest.py JOB_DIR
    # reads  JOB_DIR/job.json  {"data": "<npz of inputs>", "artifacts": {"int8": "<path>", ...}}
    # writes JOB_DIR/out.<variant>.npz (o0, o1, ... in output order) and JOB_DIR/result.json
"""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path
from typing import Any

import numpy as np


def _onnx(path: str) -> tuple[Any, int]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    sess = ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])
    first = sess.get_inputs()[0].shape[0] if sess.get_inputs()[0].shape else None
    batch = first if isinstance(first, int) and first > 0 else 1
    return (lambda feed: sess.run(None, feed)), batch


def _tflite(path: str) -> tuple[Any, int]:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=path, num_threads=1)
    inputs, outputs = it.get_input_details(), it.get_output_details()
    shapes: dict[str, tuple[int, ...]] = {}

    def call(feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        nonlocal shapes
        now = {d["name"]: feed[d["name"]].shape for d in inputs}
        if now != shapes:
            for d in inputs:
                it.resize_tensor_input(d["index"], list(now[d["name"]]))
            it.allocate_tensors()
            shapes = now
        for d in inputs:
            it.set_tensor(d["index"], feed[d["name"]])
        it.invoke()
        return [it.get_tensor(d["index"]).copy() for d in outputs]

    return call, 1


def run(path: str, data: dict[str, np.ndarray]) -> list[np.ndarray]:
    call, batch = _tflite(path) if path.endswith(".tflite") else _onnx(path)
    n = len(next(iter(data.values())))
    parts: list[list[np.ndarray]] = []
    for start in range(0, n - n % batch, batch):
        out = call({k: v[start : start + batch] for k, v in data.items()})
        if not parts:
            parts = [[] for _ in out]
        for acc, value in zip(parts, out, strict=True):
            acc.append(np.asarray(value))
    return [np.concatenate(p) if p[0].ndim >= 1 and p[0].shape[0] == batch else np.stack(p) for p in parts]


def _version(module: str) -> str | None:
    try:
        return str(__import__(module).__version__)
    except Exception:
        return None


def main(job_dir: Path) -> int:
    job = json.loads((job_dir / "job.json").read_text())
    with np.load(job["data"]) as npz:
        data = {k: npz[k] for k in npz.files}
    errors: dict[str, str] = {}
    for variant, path in job["artifacts"].items():
        try:
            values = run(path, data)
        except Exception as exc:  # reported per artifact; the host turns it into a failed check
            errors[variant] = f"{exc.__class__.__name__}: {' '.join(str(exc).split())[:300]}"
            continue
        arrays = {f"o{i}": v for i, v in enumerate(values)}
        np.savez(job_dir / f"out.{variant}.npz", **arrays)  # type: ignore[arg-type]
    result = {
        "machine": platform.machine(),
        "python": platform.python_version(),
        "runtimes": {"onnxruntime": _version("onnxruntime"), "ai-edge-litert": _litert_version()},
        "errors": errors,
    }
    (job_dir / "result.json").write_text(json.dumps(result))
    return 0


def _litert_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("ai-edge-litert")
    except Exception:
        return None


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
