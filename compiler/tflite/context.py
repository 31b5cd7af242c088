"""State shared by the lowerings while one ONNX graph is turned into one TFLite subgraph.

Layout: ONNX activations are NCHW, TFLite kernels want NHWC. Every ONNX value is recorded with
its ONNX shape and a flag saying whether its TFLite tensor holds it channels-last. Conv and
pool lowerings produce NHWC tensors; ``tensor(name, nhwc=...)`` hands a consumer the layout it
asks for and inserts one cached TRANSPOSE when the stored layout differs. Graph inputs and
outputs keep the ONNX layout, so a transpose appears only where the layout really changes.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import tflite
from onnx import numpy_helper

from compiler.tflite.builder import Operator, Options, TfliteBuilder
from compiler.tflite.errors import TfliteLoweringError

TO_NHWC = (0, 2, 3, 1)
TO_NCHW = (0, 3, 1, 2)
NONE = tflite.ActivationFunctionType.NONE


@dataclass
class Value:
    tensor: int
    shape: tuple[int, ...]  # ONNX layout; a dynamic batch is written as 1
    nhwc: bool
    producer: Operator | None = None


def nhwc_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(shape[i] for i in TO_NHWC)


def nhwc_axis(axis: int) -> int:
    """Where NCHW axis ``axis`` (0..3) sits in an NHWC tensor: 0, 3, 1, 2."""
    return TO_NHWC.index(axis)


def normalize_axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


class LoweringContext:
    """What a lowering reads (constants, shapes, attributes) and writes (tensors, operators)."""

    def __init__(self, graph: onnx.GraphProto, opset: int) -> None:
        self.opset = opset
        self.builder = TfliteBuilder()
        self.constants: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        self.values: dict[str, Value] = {}
        self.consumers = Counter(name for node in graph.node for name in node.input if name)
        self.graph_outputs = {o.name for o in graph.output}
        self.dynamic_batch: set[str] = set()
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._views: dict[tuple[str, bool], int] = {}
        self.node: str | None = None  # the node being lowered; stamped on what ``emit`` adds
        for info in [*graph.input, *graph.value_info, *graph.output]:
            self._record_shape(info)

    # ---- reading -----------------------------------------------------------------------------

    def constant(self, name: str) -> np.ndarray | None:
        return self.constants.get(name)

    def require_constant(self, node: onnx.NodeProto, index: int, what: str) -> np.ndarray:
        value = self.constant(node.input[index]) if index < len(node.input) else None
        if value is None:
            raise self.fail(node, f"{what} (input {index}) must be a constant initializer")
        return value

    def optional_constant_list(self, node: onnx.NodeProto, index: int, what: str) -> list[int] | None:
        """An optional input (absent or named ""), which must be constant when present."""
        if index >= len(node.input) or not node.input[index]:
            return None
        return [int(v) for v in self.require_constant(node, index, what).tolist()]

    def shape(self, name: str) -> tuple[int, ...]:
        if name in self.constants:
            return tuple(self.constants[name].shape)
        if name in self.values:
            return self.values[name].shape
        return self._shapes[name]

    def has_shape(self, name: str) -> bool:
        return name in self._shapes or name in self.values or name in self.constants

    def output_shape(self, node: onnx.NodeProto, index: int = 0) -> tuple[int, ...]:
        name = node.output[index]
        if name not in self._shapes:
            raise self.fail(node, f"the shape of output '{name}' is not known after ONNX shape inference")
        return self._shapes[name]

    def is_nhwc(self, name: str) -> bool:
        value = self.values.get(name)
        return value is not None and value.nhwc

    @staticmethod
    def attrs(node: onnx.NodeProto) -> dict[str, Any]:
        return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}

    def fail(self, node: onnx.NodeProto, message: str) -> TfliteLoweringError:
        where = f"ONNX op '{node.op_type}' (node '{node.name or node.output[0]}')"
        return TfliteLoweringError(f"cannot lower {where}: {message}")

    # ---- tensors -----------------------------------------------------------------------------

    def add_input(self, name: str, shape: tuple[int, ...]) -> int:
        tensor = self.builder.add_tensor(name, shape, np.float32, dynamic_batch=name in self.dynamic_batch)
        self.builder.tensors[tensor].source = name
        self.values[name] = Value(tensor, shape, nhwc=False)
        return tensor

    def tensor(self, name: str, *, nhwc: bool) -> int:
        """The TFLite tensor holding ``name`` in the requested layout (a TRANSPOSE if it differs)."""
        key = (name, nhwc)
        if key in self._views:
            return self._views[key]
        if name in self.constants:
            data = self.constants[name].astype(np.float32, copy=False)
            if nhwc:
                data = data.reshape((1,) * (4 - data.ndim) + data.shape).transpose(TO_NHWC)
            view = self.builder.add_constant(name + ("_nhwc" if nhwc else ""), np.ascontiguousarray(data))
            self.builder.tensors[view].source = name
        else:
            value = self.values[name]
            if value.nhwc == nhwc:
                return value.tensor
            perm = TO_NCHW if value.nhwc else TO_NHWC
            view = self.new_tensor(name + ("_nhwc" if nhwc else ""), value.shape, nhwc=nhwc, like=name)
            self.emit(tflite.BuiltinOperator.TRANSPOSE, [value.tensor, self.int32(perm)], [view])
        self._views[key] = view
        return view

    def new_tensor(self, name: str, shape: tuple[int, ...], *, nhwc: bool, like: str) -> int:
        """An activation tensor; ``shape`` is in ONNX layout, ``like`` names the value whose batch it shares."""
        stored = nhwc_shape(shape) if nhwc else shape
        return self.builder.add_tensor(name, stored, np.float32, dynamic_batch=like in self.dynamic_batch)

    def define(self, node: onnx.NodeProto, shape: tuple[int, ...], *, nhwc: bool, index: int = 0) -> int:
        """Create the tensor for ``node.output[index]`` and record it; ``emit`` then sets the producer."""
        name = node.output[index]
        if node.input and node.input[0] in self.dynamic_batch:
            self.dynamic_batch.add(name)
        tensor = self.new_tensor(name + ("_nhwc" if nhwc else ""), shape, nhwc=nhwc, like=name)
        self.builder.tensors[tensor].source = name
        self.values[name] = Value(tensor, shape, nhwc)
        return tensor

    def alias(self, dst: str, src: str) -> None:
        """``dst`` is the same tensor as ``src`` (Identity, Dropout, a fused Relu)."""
        if src in self.constants:
            self.constants[dst] = self.constants[src]
            return
        self.values[dst] = self.values[src]
        if src in self.dynamic_batch:
            self.dynamic_batch.add(dst)

    def rename(self, dst: str, src: str) -> None:
        """``dst`` takes over ``src``'s tensor, which now holds ``dst``'s value (a fused op)."""
        self.alias(dst, src)
        value = self.values[dst]
        self.builder.tensors[value.tensor].name = dst + ("_nhwc" if value.nhwc else "")
        self.builder.tensors[value.tensor].source = dst

    def int32(self, values: npt.ArrayLike) -> int:
        data = np.asarray(values, dtype=np.int32)
        return self.builder.add_constant(f"const_{len(self.builder.tensors)}", data)

    def float32(self, name: str, data: npt.ArrayLike) -> int:
        return self.builder.add_constant(name, np.ascontiguousarray(data, dtype=np.float32))

    # ---- operators ---------------------------------------------------------------------------

    def emit(self, opcode: int, inputs: list[int], outputs: list[int], options: Options | None = None) -> Operator:
        op = self.builder.add_operator(opcode, inputs, outputs, options)
        op.node = self.node
        for value in self.values.values():
            if value.tensor in outputs:
                value.producer = op
        return op

    def fusable_producer(self, name: str) -> Operator | None:
        """The operator making ``name`` if an activation can be fused into it: no other reader sees
        the pre-activation value and the operator has a free fused_activation_function slot."""
        value = self.values.get(name)
        if value is None or value.producer is None or value.producer.options is None:
            return None
        fields = value.producer.options.fields
        if fields.get("FusedActivationFunction", None) != NONE:
            return None
        if self.consumers[name] != 1 or name in self.graph_outputs:
            return None
        return value.producer

    def _record_shape(self, info: onnx.ValueInfoProto) -> None:
        if not info.type.HasField("tensor_type") or not info.type.tensor_type.HasField("shape"):
            return
        dims = info.type.tensor_type.shape.dim
        known = [d.dim_value if d.HasField("dim_value") else None for d in dims]
        if any(d is None for d in known[1:]):
            return  # only a dynamic batch is supported; other unknown dims leave the shape unknown
        if known and known[0] is None:
            self.dynamic_batch.add(info.name)
        self._shapes[info.name] = tuple(1 if d is None else d for d in known)
