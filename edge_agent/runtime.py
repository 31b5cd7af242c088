"""Runners: one small protocol over onnxruntime and LiteRT, and the artifact self-test.

    runner = open_runner(Path("digits_cnn.int8.onnx"), "onnxruntime", threads=1)
    runner.inputs                        # (TensorSpec(name='input', dtype='float32', shape=(None, 1, 8, 8)),)
    out = runner.run({"input": x})       # {"output": array(...)}
    selftest(runner, Path("selftest.npz"), "int8", atol=0.59).ok
    runner.close()

Errors (both one line naming the file and the fix)::

    EdgectlError
    ├── RuntimeLoadError   the artifact cannot be opened: missing, corrupt, foreign format,
    │                      unsupported op, runtime not installed
    └── InferenceError     the runtime failed while running (wrong feed, kernel error, closed)

Imports: numpy, onnxruntime and LiteRT are imported inside the functions that need them, so
importing this module costs nothing and an idle agent (no model loaded) stays small.

LiteRT comes from one of two packages. ``ai-edge-litert`` (``ai_edge_litert.interpreter``) is
current and preferred. ``tflite-runtime`` (``tflite_runtime.interpreter``) is frozen at 2.14
and its wheels are built against numpy 1.x: under numpy 2 its import fails. The agent does not
pin numpy for it; it uses whichever interpreter imports and says which one in its capabilities
(``litert_backend()``: decided from installed metadata, without importing either), so the
controller does not place TFLite variants on a device where neither works.

Thread safety: ``run`` may be called from several threads at once. onnxruntime sessions are
thread-safe; a LiteRT interpreter is not, so its runner serializes calls with a lock.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from edgectl.errors import EdgectlError

if TYPE_CHECKING:
    import numpy as np

# Runtime names as manifests and targets spell them. "tflite-runtime" (targets) and
# "tflite_runtime" (its import name) are aliases: a TFLite artifact opens in whichever LiteRT
# interpreter is importable.
ONNXRUNTIME = "onnxruntime"
LITERT = "litert"
RUNTIMES = (ONNXRUNTIME, LITERT, "tflite-runtime", "tflite_runtime")

# onnxruntime's tensor type strings → numpy dtype names.
_ORT_DTYPES = {
    "tensor(float)": "float32", "tensor(double)": "float64", "tensor(float16)": "float16",
    "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(int16)": "int16", "tensor(uint16)": "uint16",
    "tensor(int32)": "int32", "tensor(uint32)": "uint32", "tensor(int64)": "int64", "tensor(uint64)": "uint64",
    "tensor(bool)": "bool", "tensor(string)": "object",
}
_ORT_PREFIX = re.compile(r"^\[ONNXRuntimeError\] : \d+ : \w+ : (Load model from .*? failed: ?)?")


class RuntimeLoadError(EdgectlError):
    """An artifact cannot be opened in its runtime."""


class InferenceError(EdgectlError):
    """The runtime failed while running an artifact."""


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output: numpy dtype name and shape (``None`` for a dynamic dimension)."""

    name: str
    dtype: str
    shape: tuple[int | None, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


class Runner(Protocol):
    """What the agent needs from a runtime. ``run`` is thread-safe; ``close`` lets in-flight
    calls finish and makes later ones raise ``InferenceError``."""

    runtime: str
    path: Path
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def close(self) -> None: ...


def one_line(exc: BaseException, limit: int = 200) -> str:
    """A short line from a runtime exception (onnxruntime's carry a C++ location first)."""
    text = " ".join(str(exc).split())
    # ORT: "[ONNXRuntimeError] : 7 : INVALID_PROTOBUF : Load model from /long/path failed:<what>"
    text = _ORT_PREFIX.sub("", text)
    if "Status Message:" in text:  # "... Status Message: <what>", after a C++ source location
        text = text.split("Status Message:", 1)[1].strip()
        if " was false. " in text:
            text = text.split(" was false. ", 1)[1]
    return f"{exc.__class__.__name__}: {text[:limit]}" if text else exc.__class__.__name__


def _version(dist: str) -> str | None:
    # importlib.metadata pulls in email, zipfile and csv (~5 MB RSS): only when asked.
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def runtime_versions() -> dict[str, str | None]:
    """Installed versions of the runtime packages (``None`` when absent), without importing them."""
    return {d: _version(d) for d in ("onnxruntime", "ai-edge-litert", "tflite-runtime", "numpy")}


def litert_backend() -> str | None:
    """The LiteRT package ``open_runner`` will use: "ai-edge-litert", "tflite-runtime" or None.

    Decided from metadata so capabilities cost no import: tflite-runtime counts only under
    numpy 1.x, because its 2.14 wheels cannot be imported with numpy 2.
    """
    versions = runtime_versions()
    if versions["ai-edge-litert"]:
        return "ai-edge-litert"
    numpy_major = int((versions["numpy"] or "0").split(".", 1)[0])
    if versions["tflite-runtime"] and numpy_major < 2:
        return "tflite-runtime"
    return None


def available_runtimes() -> dict[str, str]:
    """Agent runtime name → "package version", for the capabilities the agent announces."""
    versions = runtime_versions()
    found: dict[str, str] = {}
    if versions["onnxruntime"]:
        found[ONNXRUNTIME] = f"onnxruntime {versions['onnxruntime']}"
    backend = litert_backend()
    if backend:
        found[LITERT] = f"{backend} {versions[backend]}"
    return found


def open_runner(path: Path, runtime: str, *, threads: int | None = None) -> Runner:
    """Open ``path`` in ``runtime`` ("onnxruntime" or "litert"); ``threads`` sets intra-op threads
    (None: the runtime's default: onnxruntime one per core, LiteRT one)."""
    if runtime not in RUNTIMES:
        raise RuntimeLoadError(f"unknown runtime {runtime!r} for {path.name}: use one of {', '.join(RUNTIMES)}")
    if not path.is_file():
        raise RuntimeLoadError(f"{path} does not exist: reinstall the artifact")
    if runtime == ONNXRUNTIME:
        return OrtRunner(path, threads)
    return LiteRTRunner(path, threads)


class OrtRunner:
    """An onnxruntime CPU session."""

    runtime = ONNXRUNTIME

    def __init__(self, path: Path, threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise RuntimeLoadError(
                f"{path.name} needs onnxruntime, which is not installed: pip install 'edgectl[agent]'"
            ) from exc
        opts = ort.SessionOptions()
        if threads is not None:
            opts.intra_op_num_threads = threads
        # Requests are served concurrently by the caller's threads: one inter-op thread per run.
        opts.inter_op_num_threads = 1
        # Errors reach the caller as our one-line exceptions; ORT's logger would repeat them.
        opts.log_severity_level = 3
        try:
            session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT's error classes (InvalidProtobuf, Fail, NotImplemented...)
            raise RuntimeLoadError(
                f"onnxruntime {ort.__version__} cannot load {path.name} ({one_line(exc)}): "
                "re-fetch the artifact, or recompile it for this onnxruntime version"
            ) from exc
        self.path = path
        self._session: Any = session
        self.inputs = tuple(TensorSpec(i.name, _ORT_DTYPES.get(i.type, i.type), _dims(i.shape))
                            for i in session.get_inputs())
        self.outputs = tuple(TensorSpec(o.name, _ORT_DTYPES.get(o.type, o.type), _dims(o.shape))
                             for o in session.get_outputs())
        self._output_names = [o.name for o in self.outputs]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        session = self._session  # a local reference: close() during this call cannot pull it away
        if session is None:
            raise InferenceError(f"{self.path.name} is closed: load it again")
        try:
            values = session.run(self._output_names, feeds)
        except Exception as exc:
            raise InferenceError(f"onnxruntime failed on {self.path.name} ({one_line(exc)})") from exc
        return dict(zip(self._output_names, values, strict=True))

    def close(self) -> None:
        # ORT frees the session when the last reference goes: in-flight runs keep theirs.
        self._session = None


def _dims(shape: Any) -> tuple[int | None, ...]:
    return tuple(d if isinstance(d, int) and d >= 0 else None for d in (shape or ()))


def litert_interpreter_class() -> Any:
    """The Interpreter class of ai-edge-litert, else of tflite-runtime under numpy 1.x, else None."""
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter
    except ImportError:
        pass
    import numpy as np

    if int(np.__version__.split(".", 1)[0]) >= 2:
        return None  # tflite-runtime 2.14 is built for numpy 1.x: under numpy 2 not even worth an import
    try:
        from tflite_runtime.interpreter import Interpreter
    except Exception:  # a broken install fails with ImportError, or AttributeError from numpy's C API
        return None
    return Interpreter


class LiteRTRunner:
    """A LiteRT (TFLite) interpreter; resizes and reallocates when the batch size changes."""

    runtime = LITERT

    def __init__(self, path: Path, threads: int | None = None) -> None:
        interpreter_cls = litert_interpreter_class()
        if interpreter_cls is None:
            raise RuntimeLoadError(
                f"{path.name} needs LiteRT, which is not installed or not importable: pip install ai-edge-litert "
                "(tflite-runtime works only with numpy<2)"
            )
        try:
            it = interpreter_cls(model_path=str(path), num_threads=threads)
            it.allocate_tensors()
        except Exception as exc:  # LiteRT raises ValueError/RuntimeError with multi-line text
            raise RuntimeLoadError(
                f"LiteRT cannot load {path.name} ({one_line(exc)}): re-fetch the artifact, or recompile it"
            ) from exc
        self.path = path
        self._it: Any = it
        self._lock = threading.Lock()
        ins, outs = it.get_input_details(), it.get_output_details()
        # An int8 model boundary (compiled with --tflite-io int8) is served with float values, as
        # the compiler's gate recorded them: quantize on the way in, dequantize on the way out,
        # each with the tensor's own scale and zero point.
        self._in = [(d["name"], d["index"], _int8_params(d)) for d in ins]
        self._out = [(d["name"], d["index"], _int8_params(d)) for d in outs]
        self._shapes = {d["name"]: tuple(int(s) for s in d["shape"]) for d in ins}
        self.inputs = tuple(_lite_spec(d) for d in ins)
        self.outputs = tuple(_lite_spec(d) for d in outs)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._lock:
            it = self._it
            if it is None:
                raise InferenceError(f"{self.path.name} is closed: load it again")
            try:
                self._fit(it, feeds)
                for name, index, q in self._in:
                    it.set_tensor(index, feeds[name] if q is None else _quantize(feeds[name], q))
                it.invoke()
                # get_tensor returns a view of the interpreter's arena: the next invoke overwrites it.
                return {
                    name: it.get_tensor(index).copy() if q is None else _dequantize(it.get_tensor(index), q)
                    for name, index, q in self._out
                }
            except KeyError as exc:
                raise InferenceError(f"{self.path.name} needs input {exc.args[0]!r}") from exc
            except Exception as exc:
                raise InferenceError(f"LiteRT failed on {self.path.name} ({one_line(exc)})") from exc

    def _fit(self, it: Any, feeds: dict[str, np.ndarray]) -> None:
        """Resize inputs whose shape changed (dynamic batch) and reallocate once."""
        shapes = {name: tuple(feeds[name].shape) for name, _, _ in self._in}
        if shapes == self._shapes:
            return
        try:
            for name, index, _ in self._in:
                it.resize_tensor_input(index, list(shapes[name]), strict=True)
            it.allocate_tensors()
        except Exception:
            self._shapes = {}  # half-resized: the next call resizes and reallocates from scratch
            raise
        self._shapes = shapes

    def close(self) -> None:
        with self._lock:  # waits for an in-flight run
            self._it = None


def _int8_params(d: dict[str, Any]) -> tuple[float, int] | None:
    """(scale, zero point) of an int8 model input or output, None for any other tensor."""
    import numpy as np

    if np.dtype(d["dtype"]) != np.int8:
        return None
    scale, zero_point = d["quantization"]
    return (float(scale), int(zero_point)) if scale else None


def _quantize(value: np.ndarray, q: tuple[float, int]) -> np.ndarray:
    import numpy as np

    return np.clip(np.round(value / q[0]) + q[1], -128, 127).astype(np.int8)


def _dequantize(value: np.ndarray, q: tuple[float, int]) -> np.ndarray:
    import numpy as np

    return ((value.astype(np.float32) - q[1]) * np.float32(q[0])).astype(np.float32)


def _lite_spec(d: dict[str, Any]) -> TensorSpec:
    import numpy as np

    sig = d.get("shape_signature")
    dims = sig if sig is not None and len(sig) else d["shape"]
    dtype = "float32" if _int8_params(d) is not None else np.dtype(d["dtype"]).name
    return TensorSpec(d["name"], dtype, tuple(int(s) if s >= 0 else None for s in dims))


# --- self-test ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class SelftestResult:
    """``max_abs`` is the largest float difference seen; ``reason`` says why ``ok`` is False."""

    ok: bool
    max_abs: float
    samples: int
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "max_abs": self.max_abs, "samples": self.samples, "reason": self.reason}


def selftest(runner: Runner, selftest_npz: Path, variant: str, atol: float) -> SelftestResult:
    """Run the manifest's recorded inputs and compare with the outputs recorded for ``variant``.

    Float outputs must agree within ``atol`` (max abs diff); integer and bool outputs exactly.
    Never raises for a bad artifact: a failure is ``ok=False`` with the reason.
    """
    import numpy as np

    name = selftest_npz.name
    try:
        with np.load(selftest_npz, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except Exception as exc:  # zipfile/numpy errors on a missing or corrupt file
        return SelftestResult(False, 0.0, 0, f"cannot read {name} ({one_line(exc)}): re-fetch the artifact")
    feeds: dict[str, np.ndarray] = {}
    for spec in runner.inputs:
        if f"input.{spec.name}" not in arrays:
            reason = f"{name} has no input {spec.name!r}: the manifest is for another model"
            return SelftestResult(False, 0.0, 0, reason)
        feeds[spec.name] = arrays[f"input.{spec.name}"]
    expected = {s.name: arrays.get(f"output.{variant}.{s.name}") for s in runner.outputs}
    missing = [k for k, v in expected.items() if v is None]
    if missing:
        return SelftestResult(False, 0.0, 0, f"{name} has no recorded output {missing[0]!r} for variant {variant!r}")
    samples = len(next(iter(feeds.values()))) if feeds else 0
    try:
        got = _run_batched(runner, feeds, samples)
    except InferenceError as exc:
        return SelftestResult(False, 0.0, samples, str(exc))
    worst = 0.0
    for out, ref in expected.items():
        assert ref is not None  # missing outputs returned above
        value = np.asarray(got[out])
        if value.shape != ref.shape:
            reason = f"output {out!r} has shape {value.shape}, recorded {ref.shape}"
            return SelftestResult(False, worst, samples, reason)
        if ref.dtype.kind in "iub" or value.dtype.kind in "iub":
            if not np.array_equal(value, ref):
                return SelftestResult(False, worst, samples, f"output {out!r} differs from the recorded values")
            continue
        diff = np.abs(value.astype(np.float64) - ref.astype(np.float64))
        # A NaN where the recording has a number is a failure, not a diff numpy would skip.
        diff[np.isnan(diff) & ~(np.isnan(value) & np.isnan(ref))] = np.inf
        max_abs = float(np.nanmax(diff)) if diff.size else 0.0
        worst = max(worst, max_abs)
        if max_abs > atol:
            return SelftestResult(
                False, worst, samples, f"output {out!r} differs by {max_abs:.3g} (allowed {atol:.3g}) from the host's"
            )
    return SelftestResult(True, worst, samples)


def _run_batched(runner: Runner, feeds: dict[str, np.ndarray], samples: int) -> dict[str, np.ndarray]:
    """All samples at once, or in the model's fixed batch size when its first input has one."""
    import numpy as np

    first = runner.inputs[0].shape[0] if runner.inputs and runner.inputs[0].shape else None
    if first is None or first == samples or samples == 0:
        return runner.run(feeds)
    parts = [runner.run({k: v[i : i + first] for k, v in feeds.items()}) for i in range(0, samples, first)]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
