"""scikit-learn frontend: a fitted estimator (or its pickle/joblib file) → ONNX via skl2onnx.

Classifiers are converted without ZipMap, so probabilities come out as a float tensor
``probabilities`` [batch, classes] next to ``label``; the input is ``"input"``,
float32 [batch, n_features]. skl2onnx and scikit-learn are imported only inside functions.

    model = convert(fitted_estimator, n_features=None, name="digits_mlp")
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import onnx

from compiler.frontends.onnx_ import one_line
from edgectl.errors import MissingExtraError, ModelLoadError

INPUT_NAME = "input"
# ai.onnx 17 ships with onnx 1.12, whose ai.onnx.ml is 3; skl2onnx lowers either when it can.
TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}


def read_pickle(path: Path) -> Any:
    """Unpickle ``path`` with joblib when installed (it reads compressed dumps), else pickle.

    Unpickling runs code from the file: only load files you trust.
    """
    try:
        try:
            import joblib
        except ImportError:
            with path.open("rb") as f:
                return pickle.load(f)
        return joblib.load(path)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] == "sklearn":
            raise MissingExtraError(
                "scikit-learn", "sklearn", "Loading a scikit-learn model"
            ) from exc
        raise ModelLoadError(
            f"{path}: the pickle needs module '{exc.name}', which is not importable here; "
            "install it or make it importable"
        ) from exc
    except Exception as exc:  # pickle/joblib raise many unrelated types on bad input
        raise ModelLoadError(
            f"{path}: not a readable pickle ({one_line(exc)}); re-save the model"
        ) from exc


def convert(estimator: Any, *, n_features: int | None, name: str) -> onnx.ModelProto:
    """Convert a fitted estimator; ``n_features`` defaults to its ``n_features_in_``."""
    try:
        from skl2onnx import convert_sklearn
        from skl2onnx.common.data_types import FloatTensorType
        from sklearn.base import BaseEstimator, is_classifier
        from sklearn.exceptions import NotFittedError
        from sklearn.utils.validation import check_is_fitted
    except ImportError as exc:
        raise MissingExtraError("skl2onnx", "sklearn", "Converting a scikit-learn model") from exc
    if not isinstance(estimator, BaseEstimator):
        raise ModelLoadError(
            f"{name}: holds a {type(estimator).__name__}, not a scikit-learn estimator; "
            "pickle the fitted estimator or pipeline itself"
        )
    try:
        check_is_fitted(estimator)
    except NotFittedError as exc:
        raise ModelLoadError(f"{name}: the estimator is not fitted; fit it, then save") from exc
    n_features = n_features or getattr(estimator, "n_features_in_", None)
    if not n_features:
        raise ModelLoadError(f"{name}: cannot tell the number of input features; pass n_features")
    # The option is only registered for classifiers; regressors reject it.
    options = {"zipmap": False} if is_classifier(estimator) else None
    try:
        return convert_sklearn(
            estimator,
            name=name,  # else skl2onnx names the graph with a random uuid
            initial_types=[(INPUT_NAME, FloatTensorType([None, int(n_features)]))],
            target_opset=TARGET_OPSET,
            options=options,
        )
    except Exception as exc:  # skl2onnx raises RuntimeError, NameError, MissingShapeCalculator
        raise ModelLoadError(
            f"{name}: skl2onnx cannot convert {type(estimator).__name__} ({one_line(exc)})"
        ) from exc
