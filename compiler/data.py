"""Calibration, evaluation and label tensors: loading, checking against the model, hashing.

A data set is a ``dict`` input-name → array whose first axis is the sample axis. Files may be:

- one ``.npy`` (single-input models only),
- one ``.npz`` whose keys are the model's input names,
- a folder of ``<input name>.npy`` files, or of ``.npz`` files concatenated in name order.

    >>> spec = input_specs(model)
    >>> data = load_tensors(Path("calibration.npz"), spec, what="calibration")
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from edgectl.errors import DataError


@dataclass(frozen=True)
class InputSpec:
    name: str
    dtype: np.dtype
    shape: tuple[int | None, ...]  # None where the model leaves a dimension symbolic

    def describe(self) -> str:
        dims = ",".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name}[{dims}] {self.dtype}"


TensorSet = dict[str, np.ndarray]


def input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    initializers = {i.name for i in model.graph.initializer}
    specs = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor = value.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim)
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type))
        specs.append(InputSpec(value.name, dtype, dims))
    return specs


def _read_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"{path} is not a readable .npy file ({exc}): save arrays with numpy.save") from exc


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"{path} is not a readable .npz file ({exc}): save arrays with numpy.savez") from exc


def _read_any(path: Path, specs: list[InputSpec]) -> dict[str, np.ndarray]:
    if path.is_dir():
        npys = sorted(path.glob("*.npy"))
        npzs = sorted(path.glob("*.npz"))
        if npys and not npzs:
            return {p.stem: _read_npy(p) for p in npys}
        if npzs and not npys:
            parts = [_read_npz(p) for p in npzs]
            keys = set(parts[0])
            for p, part in zip(npzs, parts, strict=True):
                if set(part) != keys:
                    raise DataError(
                        f"{p} has keys {sorted(part)}, {npzs[0]} has {sorted(keys)}: use the same input names"
                    )
            return {k: np.concatenate([part[k] for part in parts]) for k in sorted(keys)}
        raise DataError(f"{path} must hold either <input>.npy files or .npz files (found neither or both)")
    if not path.exists():
        raise DataError(f"{path} does not exist")
    if path.suffix == ".npz":
        return _read_npz(path)
    if path.suffix == ".npy":
        if len(specs) != 1:
            names = ", ".join(s.name for s in specs)
            raise DataError(f"{path}: the model has {len(specs)} inputs ({names}); pass an .npz keyed by input name")
        return {specs[0].name: _read_npy(path)}
    raise DataError(f"{path}: expected a .npy or .npz file or a folder of them")


def check_tensors(raw: dict[str, np.ndarray], specs: list[InputSpec], *, what: str, source: str) -> TensorSet:
    """Match arrays to the model's inputs by name, check shapes, cast to the input dtype."""
    wanted = {s.name for s in specs}
    missing = sorted(wanted - set(raw))
    unknown = sorted(set(raw) - wanted)
    if missing or unknown:
        expected = ", ".join(s.describe() for s in specs)
        raise DataError(
            f"{what} data {source} has arrays {sorted(raw)} but the model's inputs are {expected}: "
            "name each array after its input"
        )
    out: TensorSet = {}
    counts = set()
    for spec in specs:
        arr = raw[spec.name]
        if arr.ndim != len(spec.shape):
            raise DataError(
                f"{what} array {spec.name!r} in {source} has shape {arr.shape}, the model wants "
                f"{spec.describe()} (first axis = samples)"
            )
        for axis, (got, want) in enumerate(zip(arr.shape[1:], spec.shape[1:], strict=True), start=1):
            if want is not None and got != want:
                raise DataError(
                    f"{what} array {spec.name!r} in {source} has shape {arr.shape}, the model wants "
                    f"{spec.describe()} (axis {axis} differs)"
                )
        if arr.dtype.kind not in "fiub":
            raise DataError(f"{what} array {spec.name!r} in {source} has dtype {arr.dtype}: use numbers")
        if spec.dtype.kind == "f" and not np.all(np.isfinite(arr)):
            raise DataError(f"{what} array {spec.name!r} in {source} contains NaN or inf: clean the data")
        out[spec.name] = np.ascontiguousarray(arr.astype(spec.dtype, copy=False))
        counts.add(arr.shape[0])
    if len(counts) != 1:
        raise DataError(f"{what} arrays in {source} have different sample counts {sorted(counts)}")
    if counts == {0}:
        raise DataError(f"{what} data {source} holds no samples")
    return out


def load_tensors(path: Path, specs: list[InputSpec], *, what: str) -> TensorSet:
    return check_tensors(_read_any(path, specs), specs, what=what, source=str(path))


def load_labels(path: Path, count: int) -> np.ndarray:
    labels = _read_npy(path) if path.suffix == ".npy" else None
    if labels is None:
        raise DataError(f"{path}: labels must be a .npy file of integer class ids")
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise DataError(f"{path}: labels must be a 1-D integer array, got shape {labels.shape} {labels.dtype}")
    if len(labels) != count:
        raise DataError(f"{path} has {len(labels)} labels for {count} eval samples: they must match")
    return labels.astype(np.int64)


def random_tensors(specs: list[InputSpec], count: int, seed: int = 0) -> TensorSet:
    """Standard-normal samples (or small ints); only when the user asks for random calibration."""
    rng = np.random.default_rng(seed)
    out: TensorSet = {}
    for spec in specs:
        shape = (count, *(d if d is not None else 1 for d in spec.shape[1:]))
        if spec.dtype.kind == "f":
            out[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        else:
            out[spec.name] = rng.integers(0, 16, size=shape).astype(spec.dtype)
    return out


def sample_count(data: TensorSet) -> int:
    return next(iter(data.values())).shape[0]


def take(data: TensorSet, index: np.ndarray | slice) -> TensorSet:
    return {k: v[index] for k, v in data.items()}


def tensors_sha256(data: TensorSet) -> str:
    digest = hashlib.sha256()
    for name in sorted(data):
        arr = np.ascontiguousarray(data[name])
        digest.update(f"{name}:{arr.dtype.str}:{arr.shape}".encode())
        digest.update(arr.tobytes())
    return digest.hexdigest()


def drop_overlap(eval_data: TensorSet, calibration: TensorSet) -> tuple[TensorSet, int]:
    """Remove eval samples that also occur in the calibration set (fidelity must be held-out)."""
    def row_keys(data: TensorSet) -> list[bytes]:
        n = sample_count(data)
        return [b"".join(data[k][i].tobytes() for k in sorted(data)) for i in range(n)]

    seen = set(row_keys(calibration))
    keep = np.array([key not in seen for key in row_keys(eval_data)], dtype=bool)
    return take(eval_data, keep), int((~keep).sum())
