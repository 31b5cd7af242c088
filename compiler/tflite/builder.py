"""Writes a TFLite flatbuffer (schema v3) from tensors and operators collected in memory.

    b = TfliteBuilder()
    x = b.add_tensor("x", (1, 4), np.float32)
    y = b.add_tensor("y", (1, 4), np.float32)
    b.add_operator(tflite.BuiltinOperator.RELU, [x], [y])
    data = b.serialize(inputs=[x], outputs=[y])

Operators keep their options as plain data (:class:`Options`) until ``serialize`` so a later
lowering can still change them (a Relu fused into the Conv before it). The output depends only
on the order of calls, so lowering a model twice gives identical bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import flatbuffers
import numpy as np
import tflite

_TENSOR_TYPES = {
    np.dtype(np.float32): tflite.TensorType.FLOAT32,
    np.dtype(np.float16): tflite.TensorType.FLOAT16,
    np.dtype(np.int32): tflite.TensorType.INT32,
    np.dtype(np.int8): tflite.TensorType.INT8,
}
# TFLite reads constant buffers in place; 16 bytes is what its own converter aligns to.
_BUFFER_ALIGNMENT = 16
_SCHEMA_VERSION = 3


@dataclass
class Options:
    """A builtin options table by its schema name, e.g. ``Options("Conv2DOptions", {"Padding": 1})``.

    Field names are the generated code's ``<Table>Add<Field>`` suffixes.
    """

    table: str
    fields: dict[str, int | float | bool] = field(default_factory=dict)


@dataclass
class Operator:
    opcode: int
    inputs: list[int]
    outputs: list[int]
    options: Options | None = None
    node: str | None = None  # the ONNX node it was lowered from (read by the int8 pass)


@dataclass(frozen=True)
class Quantization:
    """TFLite's affine parameters: real = scale · (q - zero_point), per tensor or along ``axis``."""

    scale: tuple[float, ...]
    zero_point: tuple[int, ...]
    axis: int = 0


@dataclass
class Tensor:
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    buffer: int
    signature: tuple[int, ...] | None  # shape with -1 for a dynamic batch, None when static
    source: str | None = None  # the ONNX value it holds (any layout; or uncropped), whose int8 parameters it takes
    quantization: Quantization | None = None


class TfliteBuilder:
    """Collects tensors, constant buffers and operators of one subgraph, then serializes them."""

    def __init__(self) -> None:
        self.tensors: list[Tensor] = []
        self.operators: list[Operator] = []
        self._buffers: list[bytes] = [b""]  # buffer 0 is the schema's empty sentinel
        self._opcodes: dict[int, int] = {}

    def add_tensor(
        self,
        name: str,
        shape: tuple[int, ...],
        dtype: type | np.dtype,
        data: np.ndarray | None = None,
        *,
        dynamic_batch: bool = False,
    ) -> int:
        buffer = 0
        if data is not None:
            buffer = len(self._buffers)
            self._buffers.append(np.ascontiguousarray(data, dtype=dtype).tobytes())
        signature = (-1, *shape[1:]) if dynamic_batch and shape else None
        self.tensors.append(Tensor(name, tuple(int(d) for d in shape), np.dtype(dtype), buffer, signature))
        return len(self.tensors) - 1

    def add_constant(self, name: str, data: np.ndarray) -> int:
        return self.add_tensor(name, data.shape, data.dtype, data)

    def is_constant(self, tensor: int) -> bool:
        return self.tensors[tensor].buffer != 0

    def replace_constant(self, tensor: int, data: np.ndarray) -> None:
        """Give constant ``tensor`` new data of the same shape and (possibly) another dtype."""
        t = self.tensors[tensor]
        assert t.buffer != 0 and tuple(data.shape) == t.shape, f"{t.name} is not a constant of shape {data.shape}"
        t.dtype = np.dtype(data.dtype)
        self._buffers[t.buffer] = np.ascontiguousarray(data).tobytes()

    def constant_data(self, tensor: int) -> np.ndarray:
        """A copy of the data of constant ``tensor``."""
        t = self.tensors[tensor]
        return np.frombuffer(self._buffers[t.buffer], dtype=t.dtype).reshape(t.shape).copy()

    def set_constant_data(self, tensor: int, data: np.ndarray) -> None:
        """Overwrite constant ``tensor`` with ``data`` of the same shape (a folded BatchNormalization)."""
        t = self.tensors[tensor]
        assert t.buffer != 0 and tuple(data.shape) == t.shape, f"{t.name} is not a constant of shape {data.shape}"
        self._buffers[t.buffer] = np.ascontiguousarray(data, dtype=t.dtype).tobytes()

    def add_operator(
        self, opcode: int, inputs: list[int], outputs: list[int], options: Options | None = None
    ) -> Operator:
        op = self.make_operator(opcode, inputs, outputs, options)
        self.operators.append(op)
        return op

    def make_operator(
        self, opcode: int, inputs: list[int], outputs: list[int], options: Options | None = None
    ) -> Operator:
        """An operator for a pass that rebuilds ``operators`` itself (not appended)."""
        self._opcodes.setdefault(opcode, len(self._opcodes))
        return Operator(opcode, list(inputs), list(outputs), options)

    def prune(self, inputs: list[int], outputs: list[int]) -> tuple[list[int], list[int]]:
        """Drop tensors (and their buffers) no operator or graph edge uses; returns the remapped edges."""
        used = {t for op in self.operators for t in (*op.inputs, *op.outputs) if t >= 0} | set(inputs) | set(outputs)
        keep = [i for i in range(len(self.tensors)) if i in used]
        index = {old: new for new, old in enumerate(keep)}
        buffers: list[bytes] = [b""]
        for i in keep:
            t = self.tensors[i]
            if t.buffer != 0:
                buffers.append(self._buffers[t.buffer])
                t.buffer = len(buffers) - 1
        self._buffers = buffers
        self.tensors = [self.tensors[i] for i in keep]
        for op in self.operators:
            op.inputs = [index[t] if t >= 0 else t for t in op.inputs]
            op.outputs = [index[t] for t in op.outputs]
        used_codes = [code for code in self._opcodes if any(op.opcode == code for op in self.operators)]
        self._opcodes = {code: i for i, code in enumerate(used_codes)}
        return [index[t] for t in inputs], [index[t] for t in outputs]

    def serialize(self, inputs: list[int], outputs: list[int], description: str = "edgectl") -> bytes:
        b = flatbuffers.Builder(1024)
        buffers = [_buffer(b, data) for data in self._buffers]
        tensors = [_tensor(b, t) for t in self.tensors]
        operators = [_operator(b, op, self._opcodes[op.opcode]) for op in self.operators]
        name = b.CreateString("main")
        tensor_vec, operator_vec = _offsets(b, tensors), _offsets(b, operators)
        input_vec, output_vec = _ints(b, inputs), _ints(b, outputs)
        tflite.SubGraphStart(b)
        tflite.SubGraphAddTensors(b, tensor_vec)
        tflite.SubGraphAddInputs(b, input_vec)
        tflite.SubGraphAddOutputs(b, output_vec)
        tflite.SubGraphAddOperators(b, operator_vec)
        tflite.SubGraphAddName(b, name)
        subgraph = tflite.SubGraphEnd(b)
        opcodes = [_opcode(b, code) for code in self._opcodes]
        text = b.CreateString(description)
        subgraphs = _offsets(b, [subgraph])
        opcode_vec = _offsets(b, opcodes)
        buffer_vec = _offsets(b, buffers)
        tflite.ModelStart(b)
        tflite.ModelAddVersion(b, _SCHEMA_VERSION)
        tflite.ModelAddOperatorCodes(b, opcode_vec)
        tflite.ModelAddSubgraphs(b, subgraphs)
        tflite.ModelAddDescription(b, text)
        tflite.ModelAddBuffers(b, buffer_vec)
        b.Finish(tflite.ModelEnd(b), file_identifier=b"TFL3")
        return bytes(b.Output())


def _offsets(b: flatbuffers.Builder, offsets: list[int]) -> int:
    b.StartVector(4, len(offsets), 4)
    for offset in reversed(offsets):
        b.PrependUOffsetTRelative(offset)
    return int(b.EndVector())


def _ints(b: flatbuffers.Builder, values: list[int] | tuple[int, ...]) -> int:
    return int(b.CreateNumpyVector(np.asarray(values, dtype=np.int32)))


def _buffer(b: flatbuffers.Builder, data: bytes) -> int:
    vec = None
    if data:
        b.StartVector(1, len(data), _BUFFER_ALIGNMENT)
        b.head = b.head - len(data)
        b.Bytes[b.head : b.head + len(data)] = data
        vec = b.EndVector()
    tflite.BufferStart(b)
    if vec is not None:
        tflite.BufferAddData(b, vec)
    return int(tflite.BufferEnd(b))


def _quantization(b: flatbuffers.Builder, q: Quantization) -> int:
    scale = b.CreateNumpyVector(np.asarray(q.scale, dtype=np.float32))
    zero_point = b.CreateNumpyVector(np.asarray(q.zero_point, dtype=np.int64))
    tflite.QuantizationParametersStart(b)
    tflite.QuantizationParametersAddScale(b, scale)
    tflite.QuantizationParametersAddZeroPoint(b, zero_point)
    tflite.QuantizationParametersAddQuantizedDimension(b, q.axis)
    return int(tflite.QuantizationParametersEnd(b))


def _tensor(b: flatbuffers.Builder, t: Tensor) -> int:
    name = b.CreateString(t.name)
    shape = _ints(b, t.shape)
    signature = _ints(b, t.signature) if t.signature is not None else None
    quantization = _quantization(b, t.quantization) if t.quantization is not None else None
    tflite.TensorStart(b)
    tflite.TensorAddShape(b, shape)
    tflite.TensorAddType(b, _TENSOR_TYPES[t.dtype])
    tflite.TensorAddBuffer(b, t.buffer)
    tflite.TensorAddName(b, name)
    if signature is not None:
        tflite.TensorAddShapeSignature(b, signature)
    if quantization is not None:
        tflite.TensorAddQuantization(b, quantization)
    return int(tflite.TensorEnd(b))


def _options(b: flatbuffers.Builder, options: Options) -> int:
    getattr(tflite, f"{options.table}Start")(b)
    for name, value in options.fields.items():
        getattr(tflite, f"{options.table}Add{name}")(b, value)
    return int(getattr(tflite, f"{options.table}End")(b))


def _operator(b: flatbuffers.Builder, op: Operator, opcode_index: int) -> int:
    options = _options(b, op.options) if op.options is not None else None
    inputs, outputs = _ints(b, op.inputs), _ints(b, op.outputs)
    tflite.OperatorStart(b)
    tflite.OperatorAddOpcodeIndex(b, opcode_index)
    tflite.OperatorAddInputs(b, inputs)
    tflite.OperatorAddOutputs(b, outputs)
    if op.options is not None and options is not None:
        tflite.OperatorAddBuiltinOptionsType(b, getattr(tflite.BuiltinOptions, op.options.table))
        tflite.OperatorAddBuiltinOptions(b, options)
    return int(tflite.OperatorEnd(b))


def _opcode(b: flatbuffers.Builder, code: int) -> int:
    tflite.OperatorCodeStart(b)
    # Codes above 127 live only in builtin_code; the int8 field is kept for old readers.
    tflite.OperatorCodeAddDeprecatedBuiltinCode(b, min(code, tflite.BuiltinOperator.PLACEHOLDER_FOR_GREATER_OP_CODES))
    tflite.OperatorCodeAddBuiltinCode(b, code)
    tflite.OperatorCodeAddVersion(b, 1)
    return int(tflite.OperatorCodeEnd(b))
