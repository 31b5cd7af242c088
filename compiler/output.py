"""Write the compile output: one folder per target, built aside and renamed into place.

    OUT/.staging-<id>/<target>/{<model>.<precision>.onnx, selftest.npz, manifest.json}
        ──rename──► OUT/<target>/          (a previous folder of that name is replaced whole)

Nothing half-written: a failure before the renames leaves OUT as it was.
"""

from __future__ import annotations

import io
import os
import shutil
import uuid
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from edgectl.errors import OutputError

_EPOCH = (1980, 1, 1, 0, 0, 0)


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Like numpy.savez, but byte-identical for identical arrays (fixed zip timestamps)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for name in sorted(arrays):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arrays[name]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_EPOCH)
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue())


def fsync_tree(folder: Path) -> None:
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            with path.open("rb") as fh:
                os.fsync(fh.fileno())
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def staging(out_dir: Path) -> Iterator[Path]:
    """A scratch folder inside ``out_dir``; removed on failure (and ``out_dir`` too if we made it)."""
    created = not out_dir.exists()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        stage = out_dir / f".staging-{uuid.uuid4().hex[:12]}"
        stage.mkdir()
    except OSError as exc:
        raise OutputError(
            f"cannot write to output folder {out_dir}: {exc.strerror}; pass a writable --out"
        ) from exc
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        if created and out_dir.exists() and not any(out_dir.iterdir()):
            out_dir.rmdir()


def publish(stage: Path, out_dir: Path, names: list[str]) -> None:
    """Move each finished ``stage/<name>`` over ``out_dir/<name>``."""
    for name in names:
        fsync_tree(stage / name)
    for name in names:
        final = out_dir / name
        old = out_dir / f".old-{name}-{uuid.uuid4().hex[:8]}"
        if final.exists():
            final.rename(old)
        (stage / name).rename(final)
        if old.exists():
            shutil.rmtree(old)
