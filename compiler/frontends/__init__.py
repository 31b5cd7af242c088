"""Frontends: every supported model file becomes one in-memory ``onnx.ModelProto``.

    file ─sniff─► onnx ────────► read_onnx ────────────────┐
                  torchscript ─► read_module ─► export ────┤
                  torch ───────► read_module ─► export ────┼─► normalize ─► LoadedModel
                  pickle ──────► read_pickle ─► export     │
                                             or convert ───┘
    normalize: opset ≥ 13, Constant weights → initializers, checked, shapes inferred.

The kind is decided by the file's content; the suffix is only used to refuse unpickling a
file whose name does not say it is a pickle (unpickling runs code). Input files are only read.

    loaded = load_model(Path("digits_cnn.onnx"))
    loaded.model.graph.input[0].name          # "input"
"""

from __future__ import annotations

import hashlib
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from compiler.frontends import onnx_, sklearn_, torch_
from edgectl.errors import ModelLoadError

__all__ = ["LoadedModel", "from_sklearn", "from_torch_module", "load_model"]

# Names that announce pickled content, the only files unpickled (unpickling runs code).
PICKLE_SUFFIXES = frozenset({".pt", ".pth", ".pkl", ".pickle", ".joblib", ".bin"})
# torch.save's legacy (non-zip) format starts with this pickled magic number.
_TORCH_LEGACY_MAGIC = (0x1950A86A20F9469CFC6C).to_bytes(10, "little")
# joblib's compressed dumps: zlib, gzip, bz2, xz, lzma, lz4.
_COMPRESSED_MAGICS = (b"\x78", b"\x1f\x8b", b"BZh", b"\xfd7zXZ", b"\x5d\x00\x00", b"\x04\x22M\x18")


@dataclass(frozen=True)
class LoadedModel:
    """A model read by a frontend, ready for the passes.

    ``source_sha256`` hashes the source bytes: the file itself, or for ONNX with external
    data the ``.onnx`` bytes followed by each external data file's bytes, files in order of
    their location string (each file once). Models given as Python objects have no file, so
    it is the sha256 of the exported ONNX bytes (the exports are deterministic).

        loaded = load_model(Path("net.pt"), input_shape=(1, 3, 32, 32))
        loaded.source_format, loaded.source_name      # ("torch", "net")
    """

    model: onnx.ModelProto
    source_sha256: str
    source_format: str  # "onnx" | "torch" | "torchscript" | "sklearn"
    source_name: str


def load_model(path: Path, *, input_shape: tuple[int, ...] | None = None) -> LoadedModel:
    """Read an ONNX, PyTorch or scikit-learn file; ``input_shape`` is needed for PyTorch."""
    path = Path(path)
    kind = _sniff(path)
    origin = str(path)
    if kind == "onnx":
        model, data_files = onnx_.read_onnx(path)
        return _finish(model, _sha256_files([path, *data_files]), "onnx", path)
    _check_pickle_suffix(path, kind)
    if kind in ("torchscript", "torch"):
        shape = _require_shape(path, input_shape)
        module = torch_.read_module(path, kind)
        model = torch_.export_module(module, torch_.example_for(shape), origin=origin)
        return _finish(model, _sha256_files([path]), kind, path)
    obj = sklearn_.read_pickle(path)
    if torch_.is_module(obj):  # a module pickled with plain pickle/joblib
        shape = _require_shape(path, input_shape)
        model = torch_.export_module(obj, torch_.example_for(shape), origin=origin)
        return _finish(model, _sha256_files([path]), "torch", path)
    model = sklearn_.convert(obj, n_features=None, name=path.stem)
    return _finish(model, _sha256_files([path]), "sklearn", path)


def from_torch_module(module: Any, example_input: Any, *, name: str) -> LoadedModel:
    """Export a live ``nn.Module`` or ``ScriptModule``; ``example_input`` is one tensor.

        loaded = from_torch_module(net, torch.rand(1, 1, 8, 8), name="digits_cnn")
    """
    torch = torch_.import_torch()
    model = torch_.export_module(module, example_input, origin=name)
    kind = "torchscript" if isinstance(module, torch.jit.ScriptModule) else "torch"
    return _from_object(model, kind, name)


def from_sklearn(estimator: Any, *, n_features: int | None = None, name: str) -> LoadedModel:
    """Convert a fitted scikit-learn estimator or pipeline.

        loaded = from_sklearn(clf, name="digits_logreg")
    """
    model = sklearn_.convert(estimator, n_features=n_features, name=name)
    return _from_object(model, "sklearn", name)


def _from_object(model: onnx.ModelProto, kind: str, name: str) -> LoadedModel:
    digest = hashlib.sha256(model.SerializeToString()).hexdigest()
    return LoadedModel(onnx_.normalize(model, origin=name), digest, kind, name)


def _finish(model: onnx.ModelProto, digest: str, kind: str, path: Path) -> LoadedModel:
    return LoadedModel(onnx_.normalize(model, origin=str(path)), digest, kind, path.stem)


def _sniff(path: Path) -> str:
    """"onnx" | "torchscript" | "torch" | "pickle", from the first bytes of the file."""
    try:
        with path.open("rb") as f:
            head = f.read(16)
    except FileNotFoundError as exc:
        raise ModelLoadError(f"{path}: no such file; check the path") from exc
    except IsADirectoryError as exc:
        raise ModelLoadError(f"{path}: is a folder; pass the model file inside it") from exc
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot read ({exc.strerror}); check permissions") from exc
    if not head:
        raise ModelLoadError(f"{path}: file is empty (0 bytes); re-export or re-copy the model")
    if head.startswith(b"PK\x03\x04"):
        return _sniff_zip(path)
    if head[0] == 0x80 and 2 <= head[1] <= 5:  # pickle PROTO opcode
        legacy_torch = head[2:4] == b"\x8a\x0a" and head[4:14] == _TORCH_LEGACY_MAGIC
        return "torch" if legacy_torch else "pickle"
    if head.startswith(_COMPRESSED_MAGICS) and path.suffix.lower() in PICKLE_SUFFIXES:
        return "pickle"
    # Protobuf has no magic number: whatever is left is parsed as ONNX, which says if it isn't.
    return "onnx"


def _sniff_zip(path: Path) -> str:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise ModelLoadError(f"{path}: damaged zip archive ({exc}); re-save the model") from exc
    if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
        return "torchscript"
    if any(n.endswith("/data.pkl") for n in names):
        return "torch"
    raise ModelLoadError(
        f"{path}: a zip archive but not a PyTorch model; pass the .onnx/.pt/.pkl file itself"
    )


def _check_pickle_suffix(path: Path, kind: str) -> None:
    if kind == "torchscript" or path.suffix.lower() in PICKLE_SUFFIXES:
        return  # TorchScript is read by torch's restricted loader, not by running a pickle
    raise ModelLoadError(
        f"{path}: holds a Python pickle, which runs code when loaded; if you trust it, "
        f"rename it to one of {', '.join(sorted(PICKLE_SUFFIXES))}"
    )


def _require_shape(path: Path, input_shape: tuple[int, ...] | None) -> tuple[int, ...]:
    if input_shape is None:
        raise ModelLoadError(
            f"{path}: a PyTorch model does not record its input shape; "
            "pass --input-shape, e.g. --input-shape 1,3,224,224"
        )
    if not input_shape or any(int(d) <= 0 for d in input_shape):
        raise ModelLoadError(f"{path}: bad input shape {input_shape}; use positive sizes")
    return tuple(int(d) for d in input_shape)


def _sha256_files(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for file in paths:
        with file.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()
