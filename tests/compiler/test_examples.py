"""The bundled digits examples: real training, held-out data files, deterministic output."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from compiler.examples import EXAMPLES, digits_splits, write_example
from compiler.frontends import load_model
from edgectl.errors import UserError
from tests.zoo import ZooModel, count_params


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_digits_splits_are_disjoint_sized_and_stratified() -> None:
    splits = digits_splits()
    assert splits.train_x.shape[1:] == (1, 8, 8) and splits.train_x.dtype == np.float32
    assert splits.train_x.min() >= 0.0 and splits.train_x.max() <= 1.0
    assert (len(splits.train_x), len(splits.calibration_x), len(splits.eval_x)) == (1297, 200, 300)
    assert np.bincount(splits.eval_y).min() >= 28  # ~30 of each digit in eval


def test_digits_cnn_example(digits_cnn: ZooModel, tmp_path: Path) -> None:
    # The zoo's digits_cnn is write_example("digits-cnn") in its own folder; write it again
    # here to check the files and that a second run writes the same bytes.
    files = write_example("digits-cnn", tmp_path)
    assert files.model == tmp_path / "digits_cnn.onnx"
    assert files.accuracy >= 0.95
    pairs = [(files.model, digits_cnn.onnx_path), (files.calibration, digits_cnn.calibration),
             (files.eval, digits_cnn.eval)]
    for mine, zoo in pairs:
        assert digest(mine) == digest(zoo), mine.name
    with np.load(files.calibration) as calibration, np.load(files.eval) as evaluation:
        assert calibration.files == ["input"] and evaluation.files == ["input"]
        assert calibration["input"].shape == (200, 1, 8, 8)
        x = evaluation["input"]
    labels = np.load(files.eval_labels)
    assert x.shape == (300, 1, 8, 8) and x.dtype == np.float32
    assert labels.shape == (300,) and labels.dtype == np.int64
    session = ort.InferenceSession(str(files.model), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].name == "input"
    predicted = session.run(None, {"input": x})[0].argmax(axis=1)
    assert float((predicted == labels).mean()) == pytest.approx(files.accuracy)
    assert 10_000 <= count_params(load_model(files.model).model) <= 30_000


def test_digits_mlp_example(tmp_path: Path) -> None:
    files = write_example("digits-mlp", tmp_path / "new")  # the folder is created
    assert files.model.name == "digits_mlp.pkl"
    assert files.accuracy >= 0.95
    loaded = load_model(files.model)
    assert loaded.source_format == "sklearn"
    with np.load(files.eval) as evaluation:
        x = evaluation["input"]
    assert x.shape == (300, 64)
    session = ort.InferenceSession(loaded.model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    _, probabilities = session.run(None, {"input": x})
    accuracy = (probabilities.argmax(axis=1) == np.load(files.eval_labels)).mean()
    assert accuracy == pytest.approx(files.accuracy, abs=1 / 300)


def test_unknown_example_lists_the_names(tmp_path: Path) -> None:
    with pytest.raises(UserError) as exc:
        write_example("resnet", tmp_path)
    message = str(exc.value)
    assert "resnet" in message and all(name in message for name in EXAMPLES)
    assert not any(tmp_path.iterdir())
