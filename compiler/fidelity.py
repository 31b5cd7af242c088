"""The fidelity gate: run an artifact in its runtime (onnxruntime or LiteRT) on held-out samples.

    reference outputs (fp32 source model) ─┐
                                           ├─► Fidelity (top-1 agreement, accuracy, max-abs,
    artifact outputs (same eval samples) ──┘    RMSE, cosine per output, latency p50, size)
                                                    │
                                     Budget.check ──┴─► [] when it holds, else the reasons

    >>> ref = run(prepared, eval_data)
    >>> fid = measure(artifact, eval_data, ref, labels=labels)
    >>> Budget(max_drop=1.0).violations(fid)
    []
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from compiler.data import TensorSet, sample_count, take

# Latency is measured on this many batch-1 runs, after WARMUP runs, on one thread.
LATENCY_RUNS = 50
WARMUP = 3


def session(path: Path) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    # One thread: latency ratios stay comparable on a shared, noisy machine, and results are
    # deterministic (no reduction-order changes between runs).
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    # Fatal only: a failing run is reported once, as our one-line error, not also by ORT's logger.
    opts.log_severity_level = 4
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def error_summary(exc: BaseException, limit: int = 240) -> str:
    """One short line from an onnxruntime (or other library) exception, for user-facing errors."""
    text = " ".join(str(exc).split())
    if "Status Message:" in text:  # ORT: "[ONNXRuntimeError] : 1 : FAIL : ... Status Message: <what>"
        text = text.split("Status Message:", 1)[1].strip()
        # Drop the C++ source location and signature that precede ORT's own explanation.
        if " was false. " in text:
            text = text.split(" was false. ", 1)[1]
    return f"{exc.__class__.__name__}: {text[:limit]}"


@dataclass(frozen=True)
class Outputs:
    names: tuple[str, ...]
    values: tuple[np.ndarray, ...]  # each with the sample axis first
    latencies_ms: tuple[float, ...]


class _LiteRT:
    """The slice of onnxruntime's session API that ``run`` needs, over a LiteRT interpreter."""

    def __init__(self, path: Path) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self._interpreter = Interpreter(model_path=str(path), num_threads=1)
        self._inputs = self._interpreter.get_input_details()
        self._outputs = self._interpreter.get_output_details()
        self._shapes: dict[str, tuple[int, ...]] = {}

    def output_names(self) -> tuple[str, ...]:
        return tuple(d["name"] for d in self._outputs)

    def run(self, _: None, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        it = self._interpreter
        shapes = {d["name"]: feed[d["name"]].shape for d in self._inputs}
        if shapes != self._shapes:
            for d in self._inputs:
                it.resize_tensor_input(d["index"], list(shapes[d["name"]]))
            it.allocate_tensors()
            self._shapes = shapes
        for d in self._inputs:
            it.set_tensor(d["index"], _quantized(feed[d["name"]], d))
        it.invoke()
        return [_dequantized(it.get_tensor(d["index"]), d) for d in self._outputs]


def _quantized(value: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    """A float sample for an int8 input (a model compiled with int8 inputs): quantize it as TFLite does."""
    if detail["dtype"] != np.int8 or value.dtype == np.int8:
        return value
    scale, zero_point = detail["quantization"]
    return np.clip(np.round(value / scale) + zero_point, -128, 127).astype(np.int8)


def _dequantized(value: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    if detail["dtype"] != np.int8:
        return value.copy()
    scale, zero_point = detail["quantization"]
    return ((value.astype(np.float32) - zero_point) * np.float32(scale)).astype(np.float32)


def _open(path: Path) -> tuple[Any, tuple[str, ...], int]:
    """A runner for the artifact's own runtime, its output names and its batch size."""
    if path.suffix == ".tflite":
        lite = _LiteRT(path)
        return lite, lite.output_names(), 1
    sess = session(path)
    first = sess.get_inputs()[0].shape[0] if sess.get_inputs()[0].shape else None
    batch = first if isinstance(first, int) and first > 0 else 1
    return sess, tuple(o.name for o in sess.get_outputs()), batch


def run(path: Path, data: TensorSet, *, time_runs: int = 0) -> Outputs:
    """All samples through the model in its batch size; time the first ``time_runs`` batches."""
    sess, names, batch = _open(path)
    n = sample_count(data)
    usable = n - n % batch
    results: list[list[np.ndarray]] = [[] for _ in names]
    latencies: list[float] = []
    for j, start in enumerate(range(0, usable, batch)):
        feed = take(data, slice(start, start + batch))
        if j == 0:
            for _ in range(WARMUP if time_runs else 0):
                sess.run(None, feed)
        t0 = time.perf_counter()
        out = sess.run(None, feed)
        if j < time_runs:
            latencies.append((time.perf_counter() - t0) * 1000)
        for acc, value in zip(results, out, strict=True):
            acc.append(np.asarray(value))
    values = tuple(_stack(parts, batch) for parts in results)
    return Outputs(names, values, tuple(latencies))


def _stack(parts: list[np.ndarray], batch: int) -> np.ndarray:
    # Outputs without a sample axis (rank 0, or not batch-major) are stacked on a new axis.
    if parts[0].ndim >= 1 and parts[0].shape[0] == batch:
        return np.concatenate(parts)
    return np.stack(parts)


def classifier_output(outputs: Outputs) -> int | None:
    """Index of the output that holds class scores: the first float [N, C>1] output."""
    for i, value in enumerate(outputs.values):
        if value.dtype.kind == "f" and value.ndim == 2 and value.shape[1] > 1:
            return i
    return None


@dataclass(frozen=True)
class OutputDiff:
    max_abs: float
    rmse: float
    cosine: float
    agreement: float | None  # for integer outputs (e.g. sklearn labels): fraction equal


def output_error(ref: np.ndarray, got: np.ndarray) -> OutputDiff:
    if ref.dtype.kind in "iub":
        equal = float(np.mean(ref.reshape(ref.shape[0], -1) == got.reshape(got.shape[0], -1)))
        return OutputDiff(0.0 if equal == 1 else float("nan"), 0.0, 1.0, equal)
    r = ref.astype(np.float64).ravel()
    g = got.astype(np.float64).ravel()
    diff = r - g
    denom = float(np.linalg.norm(r) * np.linalg.norm(g))
    cosine = float(r @ g / denom) if denom > 0 else (1.0 if not diff.any() else 0.0)
    return OutputDiff(float(np.abs(diff).max()), float(np.sqrt(np.mean(diff**2))), cosine, None)


@dataclass(frozen=True)
class Fidelity:
    samples: int
    top1_agreement: float | None
    accuracy: float | None
    reference_accuracy: float | None
    outputs: dict[str, OutputDiff]
    latency_p50_ms: float
    size_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def min_cosine(self) -> float:
        return min(e.cosine for e in self.outputs.values())


def measure(
    path: Path,
    data: TensorSet,
    reference: Outputs,
    *,
    labels: np.ndarray | None = None,
    time_runs: int = LATENCY_RUNS,
) -> Fidelity:
    got = run(path, data, time_runs=time_runs)
    return compare(got, reference, labels=labels, size_bytes=path.stat().st_size)


def compare(got: Outputs, reference: Outputs, *, labels: np.ndarray | None, size_bytes: int) -> Fidelity:
    errors = {
        name: output_error(r, g)
        for name, r, g in zip(reference.names, reference.values, got.values, strict=True)
    }
    cls = classifier_output(reference)
    top1 = accuracy = ref_accuracy = None
    if cls is not None:
        ref_top = reference.values[cls].argmax(axis=1)
        got_top = got.values[cls].argmax(axis=1)
        top1 = float(np.mean(ref_top == got_top))
        if labels is not None:
            accuracy = float(np.mean(got_top == labels[: len(got_top)]))
            ref_accuracy = float(np.mean(ref_top == labels[: len(ref_top)]))
    p50 = float(np.median(got.latencies_ms)) if got.latencies_ms else float("nan")
    return Fidelity(len(got.values[0]), top1, accuracy, ref_accuracy, errors, p50, size_bytes)


@dataclass(frozen=True)
class Budget:
    """What a variant must hold. ``max_drop`` is in percentage points of top-1 (agreement with
    fp32, and labelled accuracy when labels are given); ``min_cosine`` applies to every float
    output (it is the gate for models that are not classifiers)."""

    max_drop: float = 1.0
    min_cosine: float = 0.99

    def violations(self, fid: Fidelity) -> list[str]:
        out = []
        if fid.top1_agreement is not None and (1 - fid.top1_agreement) * 100 > self.max_drop:
            out.append(
                f"top-1 agreement {fid.top1_agreement:.2%} is below {100 - self.max_drop:.2f}%"
            )
        if fid.accuracy is not None and fid.reference_accuracy is not None:
            drop = (fid.reference_accuracy - fid.accuracy) * 100
            if drop > self.max_drop:
                out.append(f"accuracy drops {drop:.2f} points (budget {self.max_drop:g})")
        for name, err in fid.outputs.items():
            if err.agreement is not None and (1 - err.agreement) * 100 > self.max_drop:
                out.append(f"output {name!r} agrees on {err.agreement:.2%} of samples")
            elif err.agreement is None and err.cosine < self.min_cosine:
                out.append(f"output {name!r} cosine {err.cosine:.4f} is below {self.min_cosine}")
        return out
