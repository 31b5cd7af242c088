"""ONNX frontend: read a model file, and normalise any ModelProto for the passes.

Every frontend's output goes through :func:`normalize`, so the passes always see the same
kind of model: weights inline as initializers, a default-domain opset the quantizer handles,
checked by ``onnx.checker`` and with shapes inferred.

    model, data_files = read_onnx(Path("net.onnx"))   # data_files: external weights read
    model = normalize(model, origin="net.onnx")
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import external_data_helper, helper, numpy_helper

from edgectl.errors import ModelLoadError

# Older opsets are rare and version_converter's adapters below 10 are incomplete.
MIN_OPSET = 10
# onnxruntime's QDQ quantizer needs opset 13 for per-channel (axis on Quantize/DequantizeLinear).
QDQ_MIN_OPSET = 13
# protobuf cannot hold more than this in one message; larger models need another path.
_PROTO_LIMIT = 2**31 - 1
_DEFAULT_DOMAINS = ("", "ai.onnx")


def one_line(exc: BaseException) -> str:
    """The first line of a library error, short enough for a one-line user message."""
    text = str(exc).strip().splitlines()
    first = text[0] if text else type(exc).__name__
    return first if len(first) <= 200 else first[:197] + "..."


def read_onnx(path: Path) -> tuple[onnx.ModelProto, list[Path]]:
    """Parse ``path`` and load its external data; returns the model and the data files read.

    The file is only read: external data is pulled into memory, never rewritten on disk.
    """
    try:
        model = onnx.load_model(str(path), load_external_data=False)
    except (DecodeError, OSError, RuntimeError, ValueError, UnicodeDecodeError) as exc:
        raise ModelLoadError(
            f"{path}: not a readable ONNX model (truncated or not ONNX: {one_line(exc)}); "
            "re-export or re-download it"
        ) from exc
    # Random bytes sometimes parse as an empty protobuf message, so check for substance.
    if not model.opset_import or not model.graph.node:
        raise ModelLoadError(
            f"{path}: not an ONNX model (no graph or no opset); pass a model exported to .onnx"
        )
    data_files = _external_files(model, path)
    if data_files:
        try:
            external_data_helper.load_external_data_for_model(model, str(path.parent))
        except (OSError, ValueError, RuntimeError, onnx.checker.ValidationError) as exc:
            raise ModelLoadError(
                f"{path}: cannot read its external data ({one_line(exc)}); "
                "re-save the model with its data files"
            ) from exc
    return model, data_files


def _external_files(model: onnx.ModelProto, path: Path) -> list[Path]:
    """The external data files the model names, checked to exist inside the model's folder."""
    folder = path.parent.resolve()
    files: dict[str, Path] = {}
    for tensor in _all_tensors(model.graph):
        if not external_data_helper.uses_external_data(tensor):
            continue
        location = external_data_helper.ExternalDataInfo(tensor).location
        target = (folder / location).resolve()
        # A location is attacker-controlled text: refuse anything that leaves the folder.
        if Path(location).is_absolute() or not target.is_relative_to(folder):
            raise ModelLoadError(
                f"{path}: external data location '{location}' points outside the model's "
                "folder; re-save the model with relative data paths"
            )
        if not target.is_file():
            raise ModelLoadError(
                f"{path}: external data file '{location}' not found in {folder}; "
                "copy it next to the model"
            )
        files[location] = target
    return [files[name] for name in sorted(files)]


def _all_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _all_tensors(attr.g)
            for sub in attr.graphs:
                yield from _all_tensors(sub)


@functools.cache
def supported_opsets() -> tuple[int, int]:
    """(lowest, highest) default-domain opset accepted: what both onnx and onnxruntime run.

        low, high = supported_opsets()     # (10, 28) with onnx 1.23 and onnxruntime 1.32
    """
    highest = onnx.defs.onnx_opset_version()
    try:
        import onnxruntime  # noqa: F401
    except ImportError:  # the compiler extra has it; without it onnx's own limit applies
        return MIN_OPSET, highest
    # onnxruntime has no API for its newest opset, so ask it about a one-node model.
    while highest > QDQ_MIN_OPSET and not _ort_accepts(highest):
        highest -= 1
    return MIN_OPSET, highest


def _ort_accepts(opset: int) -> bool:
    import onnxruntime as ort

    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe", [x], [y])
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = helper.find_min_ir_version_for(opsets)
    options = ort.SessionOptions()
    options.log_severity_level = 4  # the probe failing is expected; keep it quiet
    try:
        ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception:  # onnxruntime raises its own untyped Fail for an unknown opset
        return False
    return True


def default_opset(model: onnx.ModelProto) -> int | None:
    """The model's ai.onnx opset, or None when it imports only other domains."""
    versions = [o.version for o in model.opset_import if o.domain in _DEFAULT_DOMAINS]
    return max(versions) if versions else None


def normalize(model: onnx.ModelProto, *, origin: str) -> onnx.ModelProto:
    """Check, upgrade and tidy a model for the passes; ``origin`` names it in errors.

    Takes ownership of ``model`` (it may be changed in place) and returns the result.
    """
    if model.ByteSize() > _PROTO_LIMIT:
        raise ModelLoadError(f"{origin}: models over 2 GB are not supported yet")
    _dedupe_opsets(model)
    opset = default_opset(model)
    if opset is not None:
        low, high = supported_opsets()
        if not low <= opset <= high:
            raise ModelLoadError(
                f"{origin}: unsupported opset {opset} (supported {low}..{high}): "
                "re-export with opset_version=17"
            )
        if opset < QDQ_MIN_OPSET:
            model = _upgrade(model, origin, opset)
    constants_to_initializers(model.graph)
    _drop_initializer_inputs(model.graph)
    try:
        onnx.checker.check_model(model)
        model = onnx.shape_inference.infer_shapes(
            model, check_type=True, strict_mode=True, data_prop=True
        )
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ModelLoadError(
            f"{origin}: invalid ONNX model ({one_line(exc)}); re-export it"
        ) from exc
    return model


def _dedupe_opsets(model: onnx.ModelProto) -> None:
    # skl2onnx can import the same domain twice; keep the highest version of each.
    best: dict[str, int] = {}
    for o in model.opset_import:
        domain = "" if o.domain == "ai.onnx" else o.domain
        best[domain] = max(best.get(domain, 0), o.version)
    if len(best) != len(model.opset_import):
        del model.opset_import[:]
        model.opset_import.extend(helper.make_opsetid(d, v) for d, v in best.items())


def _upgrade(model: onnx.ModelProto, origin: str, opset: int) -> onnx.ModelProto:
    try:
        upgraded = onnx.version_converter.convert_version(model, QDQ_MIN_OPSET)
    except Exception as exc:  # the converter raises bare RuntimeError/IndexError per adapter
        raise ModelLoadError(
            f"{origin}: cannot upgrade opset {opset} to {QDQ_MIN_OPSET} ({one_line(exc)}); "
            f"re-export with opset_version>={QDQ_MIN_OPSET}"
        ) from exc
    # The converter keeps the old IR version, which may predate what the new opset needs.
    upgraded.ir_version = max(
        upgraded.ir_version, helper.find_min_ir_version_for(list(upgraded.opset_import))
    )
    return upgraded


def constants_to_initializers(graph: onnx.GraphProto) -> int:
    """Move tensors held in top-level Constant nodes into initializers; returns how many.

    Quantizers treat only initializers as weights: a Conv whose weight comes from a Constant
    node (Paddle and some TF exports) would otherwise stay fp32.
    """
    outputs = {o.name for o in graph.output}
    keep: list[onnx.NodeProto] = []
    moved: list[onnx.TensorProto] = []
    for node in graph.node:
        tensor = _constant_value(node) if node.output[0] not in outputs else None
        if tensor is None:
            keep.append(node)
        else:
            tensor.name = node.output[0]
            moved.append(tensor)
    if moved:
        del graph.node[:]
        graph.node.extend(keep)
        graph.initializer.extend(moved)
    return len(moved)


def _constant_value(node: onnx.NodeProto) -> onnx.TensorProto | None:
    if node.op_type != "Constant" or node.domain not in _DEFAULT_DOMAINS:
        return None
    if len(node.attribute) != 1:
        return None
    attr = node.attribute[0]
    if attr.name == "value":
        tensor = onnx.TensorProto()
        tensor.CopyFrom(attr.t)
        return tensor
    values = {
        "value_float": (lambda: attr.f, np.float32),
        "value_floats": (lambda: list(attr.floats), np.float32),
        "value_int": (lambda: attr.i, np.int64),
        "value_ints": (lambda: list(attr.ints), np.int64),
    }
    # sparse_value and string constants stay as nodes: no quantizer cares about them.
    if attr.name not in values:
        return None
    read, dtype = values[attr.name]
    return numpy_helper.from_array(np.array(read(), dtype=dtype))


def _drop_initializer_inputs(graph: onnx.GraphProto) -> None:
    # Old exporters list weights as graph inputs too; then runtimes treat them as overridable
    # inputs and will not fold them, and "the model's input" becomes ambiguous downstream.
    weights = {t.name for t in graph.initializer}
    if any(i.name in weights for i in graph.input):
        data_inputs = [i for i in graph.input if i.name not in weights]
        del graph.input[:]
        graph.input.extend(data_inputs)
