"""PyTorch frontend: TorchScript archives, pickled ``nn.Module`` files and live modules → ONNX.

Two exporters, because neither handles both kinds of module in torch 2.x:

- ``nn.Module`` → the torch.export-based exporter (``dynamo=True``): the supported path,
  deterministic, and it refuses (rather than silently mis-traces) data-dependent control flow.
- ``torch.jit.ScriptModule`` → the TorchScript exporter (``dynamo=False``): torch.export
  cannot capture a ScriptModule, and this is the only exporter that reads TorchScript.

torch is optional and imported only inside these functions.

    model = export_module(net, torch.rand(1, 1, 8, 8), origin="net")
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import onnx

from compiler.frontends.onnx_ import one_line
from edgectl.errors import MissingExtraError, ModelLoadError

OPSET = 17
INPUT_NAME = "input"
OUTPUT_NAME = "output"
_BATCH = "batch"


def import_torch() -> Any:
    """``import torch``, or the one-line error that says which extra to install."""
    try:
        import torch
    except ImportError as exc:
        raise MissingExtraError("torch", "torch", "Loading a PyTorch model") from exc
    return torch


def is_module(obj: object) -> bool:
    """True when ``obj`` is a torch ``nn.Module`` (without importing torch for other objects)."""
    # Unpickling a module imports torch, so if torch is not loaded, obj cannot be one.
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.nn.Module)


def read_module(path: Path, kind: str) -> Any:
    """Load a ``"torchscript"`` archive or a ``"torch"`` (torch.save) file as a module."""
    torch = import_torch()
    try:
        if kind == "torchscript":
            with _quiet():  # torch 2.x warns that TorchScript is deprecated on every load
                module = torch.jit.load(str(path), map_location="cpu")
        else:
            # weights_only=False runs the pickle's code: only load files you trust. It is the
            # only way to restore a whole module saved with torch.save(model).
            module = torch.load(str(path), map_location="cpu", weights_only=False)
    except (ModuleNotFoundError, AttributeError) as exc:
        raise ModelLoadError(
            f"{path}: the pickled model's class cannot be imported ({one_line(exc)}); "
            "make its module importable, or save it as TorchScript (torch.jit.save)"
        ) from exc
    except Exception as exc:  # torch raises RuntimeError, PickleError, EOFError, ...
        raise ModelLoadError(
            f"{path}: not a readable PyTorch file ({one_line(exc)}); re-save it"
        ) from exc
    if not isinstance(module, torch.nn.Module):
        what = "a state_dict" if isinstance(module, dict) else f"a {type(module).__name__}"
        raise ModelLoadError(
            f"{path}: holds {what}, not a model; save the whole module with "
            "torch.save(model) or torch.jit.save(torch.jit.script(model))"
        )
    return module


def example_for(input_shape: tuple[int, ...]) -> Any:
    """A fixed pseudo-random float32 input of ``input_shape`` (fixed so exports repeat)."""
    torch = import_torch()
    generator = torch.Generator().manual_seed(0)
    return torch.rand(input_shape, generator=generator, dtype=torch.float32)


def export_module(module: Any, example_input: Any, *, origin: str) -> onnx.ModelProto:
    """Export ``module`` with one input ``"input"`` (batch axis dynamic) to ONNX opset 17."""
    torch = import_torch()
    if not isinstance(example_input, torch.Tensor):
        example_input = torch.as_tensor(example_input)
    if not isinstance(module, torch.nn.Module):
        raise ModelLoadError(f"{origin}: expected a torch.nn.Module, got {type(module).__name__}")
    was_training = module.training
    module.eval()  # dropout/batch-norm must export in inference mode
    try:
        with _quiet():
            if isinstance(module, torch.jit.ScriptModule):
                model = _export_torchscript(torch, module, example_input, origin)
            else:
                model = _export_dynamo(torch, module, example_input, origin)
    finally:
        module.train(was_training)
    _strip_debug_info(model)
    return model


def _export_torchscript(torch: Any, module: Any, example: Any, origin: str) -> onnx.ModelProto:
    # Exporting inlines the ScriptModule's graph in place, which changes node names on the
    # next export; a private copy (save + load) keeps the output byte-identical every time.
    buffer = io.BytesIO()
    torch.jit.save(module, buffer)
    buffer.seek(0)
    private = torch.jit.load(buffer, map_location="cpu")
    out = io.BytesIO()
    try:
        torch.onnx.export(
            private,
            (example,),
            out,
            dynamo=False,
            opset_version=OPSET,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: _BATCH}, OUTPUT_NAME: {0: _BATCH}},
        )
    except Exception as exc:  # torch.onnx raises several unrelated types
        raise ModelLoadError(
            f"{origin}: torch.onnx could not export this TorchScript model ({one_line(exc)})"
        ) from exc
    return onnx.load_model_from_string(out.getvalue())


def _export_dynamo(torch: Any, module: Any, example: Any, origin: str) -> onnx.ModelProto:
    # torch.export specialises a size-1 dimension to a constant, so the batch axis can only
    # be made dynamic from an example with batch >= 2.
    batched = torch.cat([example, example]) if example.shape[0] == 1 else example
    attempts: list[tuple[Any, Any]] = [
        (batched, ({0: torch.export.Dim(_BATCH)},)),
        (example, None),  # a model that fixes its batch size exports with static shapes
    ]
    error: Exception | None = None
    for args, dynamic_shapes in attempts:
        try:
            program = torch.onnx.export(
                module,
                (args,),
                dynamo=True,
                opset_version=OPSET,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=dynamic_shapes,
                verbose=False,
            )
            return program.model_proto
        except Exception as exc:  # torch.onnx wraps failures in several unrelated types
            error = error or exc
    assert error is not None
    raise ModelLoadError(
        f"{origin}: torch.export could not capture the model ({one_line(error)}); "
        "script it (torch.jit.script) and save it as TorchScript, or export ONNX yourself"
    ) from error


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    # The exporters warn about deprecations and missing torchvision on every call; none of it
    # is actionable for an edgectl user, and real failures arrive as exceptions.
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "onnxscript")]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)


def _strip_debug_info(model: onnx.ModelProto) -> None:
    # The dynamo exporter records stack traces with absolute source paths on every node:
    # they would leak the build machine's layout into artifacts and change their hashes.
    for node in model.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
