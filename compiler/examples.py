"""Bundled examples: small real models trained on scikit-learn's digits, with their data files.

Nothing is downloaded: ``load_digits`` ships with scikit-learn. Training is seeded, so the
same versions and thread count write the same files.

    files = write_example("digits-cnn", Path("example"))
    files.model, files.accuracy        # example/digits_cnn.onnx, about 0.98
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from compiler.frontends import from_torch_module
from compiler.frontends.torch_ import INPUT_NAME, import_torch
from compiler.output import write_npz
from edgectl.errors import MissingExtraError, OutputError, UserError

EXAMPLES = ("digits-cnn", "digits-mlp")
SEED = 0
N_EVAL = 300
N_CALIBRATION = 200


@dataclass(frozen=True)
class ExampleFiles:
    """What :func:`write_example` wrote, and the fp32 accuracy of the model on ``eval``.

        files = write_example("digits-mlp", out)
        np.load(files.eval)["input"].shape     # (300, 64)
    """

    model: Path
    calibration: Path  # npz, one array keyed by the model's input name
    eval: Path  # npz, same key
    eval_labels: Path  # npy, int64
    accuracy: float


@dataclass(frozen=True)
class DigitsSplits:
    """Deterministic, stratified train / calibration / eval splits of digits, images N×1×8×8.

        splits = digits_splits()
        splits.eval_x.shape                     # (300, 1, 8, 8)
    """

    train_x: np.ndarray
    train_y: np.ndarray
    calibration_x: np.ndarray
    eval_x: np.ndarray
    eval_y: np.ndarray


def digits_splits() -> DigitsSplits:
    """Digits scaled to [0, 1]; eval and calibration are held out from training."""
    sklearn = _sklearn()
    x, y = sklearn.datasets.load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    y = y.astype(np.int64)
    split = sklearn.model_selection.train_test_split
    rest_x, eval_x, rest_y, eval_y = split(x, y, test_size=N_EVAL, random_state=SEED, stratify=y)
    train_x, calib_x, train_y, _ = split(
        rest_x, rest_y, test_size=N_CALIBRATION, random_state=SEED, stratify=rest_y
    )
    return DigitsSplits(train_x, train_y, calib_x, eval_x, eval_y)


def write_example(name: str, out_dir: Path) -> ExampleFiles:
    """Train the example ``name`` (one of :data:`EXAMPLES`) and write it into ``out_dir``."""
    if name not in EXAMPLES:
        raise UserError(f"unknown example '{name}': choose one of {', '.join(EXAMPLES)}")
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        return _write_cnn(out_dir) if name == "digits-cnn" else _write_mlp(out_dir)
    except OSError as exc:
        raise OutputError(f"cannot write the example into {out_dir}: {exc.strerror}") from exc


def _write_cnn(out_dir: Path) -> ExampleFiles:
    splits = digits_splits()
    net = train_digits_cnn(splits)
    loaded = from_torch_module(net, import_torch().from_numpy(splits.eval_x[:1]), name="digits_cnn")
    model_path = out_dir / "digits_cnn.onnx"
    onnx.save_model(loaded.model, str(model_path))
    accuracy = _onnx_accuracy(loaded.model, splits.eval_x, splits.eval_y)
    return _write_data(out_dir, model_path, splits, flatten=False, accuracy=accuracy)


def _write_mlp(out_dir: Path) -> ExampleFiles:
    splits = digits_splits()
    mlp = train_digits_mlp(splits)
    model_path = out_dir / "digits_mlp.pkl"
    model_path.write_bytes(pickle.dumps(mlp, protocol=pickle.HIGHEST_PROTOCOL))
    accuracy = float(mlp.score(_flat(splits.eval_x), splits.eval_y))
    return _write_data(out_dir, model_path, splits, flatten=True, accuracy=accuracy)


def _write_data(
    out_dir: Path, model: Path, splits: DigitsSplits, *, flatten: bool, accuracy: float
) -> ExampleFiles:
    shape = _flat if flatten else (lambda a: a)
    files = ExampleFiles(
        model=model,
        calibration=out_dir / "calibration.npz",
        eval=out_dir / "eval.npz",
        eval_labels=out_dir / "eval_labels.npy",
        accuracy=accuracy,
    )
    write_npz(files.calibration, {INPUT_NAME: shape(splits.calibration_x)})
    write_npz(files.eval, {INPUT_NAME: shape(splits.eval_x)})
    np.save(files.eval_labels, splits.eval_y)
    return files


def train_digits_cnn(splits: DigitsSplits, *, epochs: int = 30) -> Any:
    """A seeded 2-conv + 2-linear CNN (21,546 parameters) trained on ``splits.train_*``."""
    torch = import_torch()
    nn = torch.nn
    # fork_rng: seed for this training only, leaving the caller's global RNG untouched.
    with torch.random.fork_rng():
        torch.manual_seed(SEED)
        net = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(32 * 4 * 4, 32),
            nn.ReLU(),
            nn.Linear(32, 10),
        )
        fit_classifier(net, splits.train_x, splits.train_y, epochs=epochs, lr=3e-3)
    return net.eval()


def fit_classifier(
    net: Any, x: np.ndarray, y: np.ndarray, *, epochs: int, lr: float, batch: int = 64
) -> None:
    """Adam + cosine schedule, shuffled with a seeded generator; shared by example and zoo.

    Runs on one thread: the result then does not depend on the machine's core count, and
    these small layers gain little from more threads but suffer badly on a busy machine.
    """
    torch = import_torch()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _fit(torch, net, x, y, epochs=epochs, lr=lr, batch=batch)
    finally:
        torch.set_num_threads(threads)


def _fit(torch: Any, net: Any, x: np.ndarray, y: np.ndarray, *, epochs: int, lr: float,
         batch: int) -> None:
    inputs, labels = torch.from_numpy(x), torch.from_numpy(y)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    steps = epochs * -(-len(inputs) // batch)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    generator = torch.Generator().manual_seed(SEED)
    net.train()
    for _ in range(epochs):
        order = torch.randperm(len(inputs), generator=generator)
        for start in range(0, len(inputs), batch):
            idx = order[start : start + batch]
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(net(inputs[idx]), labels[idx])
            loss.backward()
            optimizer.step()
            schedule.step()
    net.eval()


def train_digits_mlp(splits: DigitsSplits) -> Any:
    """A seeded scikit-learn MLPClassifier (64→64→10) on the flattened images."""
    sklearn = _sklearn()
    mlp = sklearn.neural_network.MLPClassifier(
        hidden_layer_sizes=(64,), max_iter=400, random_state=SEED
    )
    return mlp.fit(_flat(splits.train_x), splits.train_y)


def _onnx_accuracy(model: onnx.ModelProto, x: np.ndarray, y: np.ndarray) -> float:
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    logits = session.run(None, {INPUT_NAME: x})[0]
    return float((logits.argmax(axis=1) == y).mean())


def _flat(x: np.ndarray) -> np.ndarray:
    return x.reshape(len(x), -1)


def _sklearn() -> Any:
    try:
        import sklearn.datasets
        import sklearn.model_selection
        import sklearn.neural_network
    except ImportError as exc:
        raise MissingExtraError("scikit-learn", "sklearn", "Building the digits example") from exc
    return sklearn
