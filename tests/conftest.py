"""Shared fixtures: the zoo's models, built once per session into a temporary cache.

The zoo is imported inside the fixtures so suites that need no compiler (agent, fleet)
do not import onnx, torch or scikit-learn.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.artifacts import CompiledArtifacts
    from tests.mosquitto import Mosquitto
    from tests.zoo import ZooModel


@pytest.fixture(scope="session")
def zoo_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("zoo")


@pytest.fixture(scope="session")
def digits_cnn(zoo_cache: Path) -> ZooModel:
    from tests import zoo

    return zoo.digits_cnn(zoo_cache)


@pytest.fixture(scope="session")
def digits_mlp(zoo_cache: Path) -> ZooModel:
    from tests import zoo

    return zoo.digits_mlp(zoo_cache)


@pytest.fixture(scope="session")
def mnist_cnn(zoo_cache: Path) -> ZooModel:
    from tests import zoo

    return zoo.mnist_cnn(zoo_cache)


# --- a real signed compile output (agent and fleet tests) -----------------------------------


@pytest.fixture(scope="session")
def digits_artifacts(digits_cnn: ZooModel, tmp_path_factory: pytest.TempPathFactory) -> CompiledArtifacts:
    from compiler.pipeline import CompileOptions, compile_model
    from edgectl.signing import write_keypair
    from edgectl.targets import load_target
    from tests.artifacts import TARGETS, CompiledArtifacts

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


# --- Mosquitto (tests marked mqtt) ----------------------------------------------------------
# A missing broker fails the test with the fix (never a skip: CI must not go green without it).


def _start_mosquitto(tmp_dir: Path) -> Mosquitto:
    from tests.mosquitto import Mosquitto, MosquittoMissing

    broker = Mosquitto(tmp_dir)
    try:
        broker.start()
    except MosquittoMissing as exc:
        pytest.fail(f"{exc}", pytrace=False)
    return broker


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A broker of its own for this test, free to stop, kill and restart (same port)."""
    broker = _start_mosquitto(tmp_path / "mosquitto")
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def mosquitto_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """One broker shared by the whole run; use unique client ids and topics, never stop it."""
    broker = _start_mosquitto(tmp_path_factory.mktemp("mosquitto"))
    yield broker
    broker.stop()
