"""A real compile output shared by the agent and fleet tests: the digits CNN compiled once per
session for two targets and signed (the ``digits_artifacts`` fixture in ``tests/conftest.py``).

    def test_x(digits_artifacts):
        folder = digits_artifacts.folder("arm64-cortex-a72")
        path = digits_artifacts.artifact("arm64-cortex-a72", "tflite-fp32")
        entry = digits_artifacts.variant("arm64-cortex-a72", "tflite-fp32")   # manifest entry

The folders are shared by every test of the session: copy a file to ``tmp_path`` before
corrupting or moving it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

TARGETS = ("x86_64-avx2", "arm64-cortex-a72")  # arm64 lists litert: it also gets a TFLite variant


@dataclass(frozen=True)
class CompiledArtifacts:
    """The compiler's output for one model: ``out_dir/<target>/`` with artifacts, selftest.npz
    and a manifest signed by ``private_key`` (``public_key`` verifies it)."""

    model: str
    out_dir: Path
    folders: dict[str, Path]  # target name → folder
    public_key: Path
    private_key: Path
    source: Path  # the fp32 source ONNX
    eval_data: Path  # npz keyed by input name (held-out samples)

    def folder(self, target: str) -> Path:
        return self.folders[target]

    def manifest(self, target: str) -> dict[str, Any]:
        return dict(json.loads((self.folders[target] / "manifest.json").read_text()))

    def variants(self, target: str) -> list[dict[str, Any]]:
        """The manifest entries of the variants that were emitted (they have a file)."""
        return [v for v in self.manifest(target)["variants"] if v.get("file")]

    def variant(self, target: str, name: str) -> dict[str, Any]:
        return next(v for v in self.variants(target) if v["variant"] == name)

    def artifact(self, target: str, name: str) -> Path:
        return self.folders[target] / self.variant(target, name)["file"]

    def selftest_npz(self, target: str) -> Path:
        return self.folders[target] / "selftest.npz"

    def sample(self, n: int = 1) -> dict[str, np.ndarray]:
        """The first ``n`` held-out inputs, keyed by input name."""
        with np.load(self.eval_data) as npz:
            return {k: npz[k][:n] for k in npz.files}
