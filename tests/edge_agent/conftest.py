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

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

if TYPE_CHECKING:
    pass

# (target, variant) pairs the compile emits, for parametrized tests; test_runtime checks this
# list against the manifests so it cannot go stale.
EMITTED = (("x86_64-avx2", "int8"), ("x86_64-avx2", "fp32"),
           ("arm64-cortex-a72", "int8"), ("arm64-cortex-a72", "fp32"), ("arm64-cortex-a72", "tflite-fp32"),
           ("arm64-cortex-a72", "tflite-int8"))


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
