"""Shared fixtures: the zoo's models, built once per session into a temporary cache.

The zoo is imported inside the fixtures so suites that need no compiler (agent, fleet)
do not import onnx, torch or scikit-learn.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
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
