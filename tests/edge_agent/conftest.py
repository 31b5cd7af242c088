"""Agent fixtures: the digits CNN compiled once per session, signed, for two targets.

    def test_x(digits_artifacts):
        folder = digits_artifacts.folder("arm64-cortex-a72")
        path = digits_artifacts.artifact("arm64-cortex-a72", "tflite-fp32")
        entry = digits_artifacts.variant("arm64-cortex-a72", "tflite-fp32")   # manifest entry

The folders are shared by every test of the session: copy a file to ``tmp_path`` before
corrupting or moving it. The compiler is imported inside the fixture, so agent tests that do
not use it never import onnx.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

if TYPE_CHECKING:
    from tests.zoo import ZooModel

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


@pytest.fixture(scope="session")
def digits_artifacts(digits_cnn: ZooModel, tmp_path_factory: pytest.TempPathFactory) -> CompiledArtifacts:
    from compiler.pipeline import CompileOptions, compile_model
    from edgectl.signing import write_keypair
    from edgectl.targets import load_target

    root = tmp_path_factory.mktemp("digits-artifacts")
    private = root / "signing.key"
    public = write_keypair(private)
    out = root / "out"
    options = CompileOptions(
        targets=tuple(load_target(t) for t in TARGETS), out_dir=out, calibration=digits_cnn.calibration,
        eval_data=digits_cnn.eval, labels=digits_cnn.labels, sign_key=private,
    )
    result = compile_model(digits_cnn.onnx_path, options)
    assert result.exit_code == 0 and set(result.written) == set(TARGETS), result.to_dict()
    return CompiledArtifacts("digits_cnn", out, {t: out / t for t in TARGETS}, public, private,
                             digits_cnn.onnx_path, digits_cnn.eval)


# (target, variant) pairs the compile emits, for parametrized tests; test_runtime checks this
# list against the manifests so it cannot go stale.
EMITTED = (("x86_64-avx2", "int8"), ("x86_64-avx2", "fp32"),
           ("arm64-cortex-a72", "int8"), ("arm64-cortex-a72", "fp32"), ("arm64-cortex-a72", "tflite-fp32"))


class FakeRunner:
    """A Runner whose ``run`` is a function of the feeds: for failures real models do not make."""

    runtime = "fake"

    def __init__(self, fn: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]],
                 shape: tuple[int | None, ...] = (None, 4)) -> None:
        from edge_agent.runtime import TensorSpec

        self.path = Path("fake.onnx")
        self.inputs = (TensorSpec("x", "float32", shape),)
        self.outputs = (TensorSpec("y", "float32", shape),)
        self.fn = fn
        self.closed = False

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.fn(feeds)

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def fake_runner() -> type[FakeRunner]:
    return FakeRunner
