"""The int8 pass: turn the float subgraph lowered from a stripped QDQ graph into TFLite int8.

    builder (float ops, each tensor knows its ONNX value) + QuantPlan (onnxruntime's parameters)
        │  walk the operators in order
        ├─ op with an int8 kernel, every input/output quantized ─► int8 op
        │     CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED / TRANSPOSE_CONV: int8 weights (the QDQ
        │     initializer's integers, per channel along TFLite's output-channel axis), int32 bias
        │     at in_s·w_s[c]
        │     SAME_PARAMS ops (pool, reshape, transpose, pad, slice, gather, …): output takes the input's
        │     parameters; where onnxruntime gave it others, a QUANTIZE (requantize) follows
        │     ALL_SAME ops (concat, min, max): inputs requantized to the output's parameters
        │     FIXED ops (softmax, logistic, tanh): the spec's output parameters, then requantize
        │     (FREE readers such as SiLU's MUL read the spec-parameters tensor directly)
        │     FREE ops (add, mul, mean, hard-swish, batch-matmul, …): onnxruntime's parameters
        └─ anything else (a node the fidelity fallback kept in fp32, an op without an int8
           kernel): DEQUANTIZE → float op → QUANTIZE island
    model inputs/outputs: float with QUANTIZE / DEQUANTIZE at the edges, or int8 (``io="int8"``)

Parameter rules are TFLite's quantization spec (tensorflow.org/lite/performance/quantization_spec).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
import tflite

from compiler.tflite.builder import Operator, Options, Quantization, TfliteBuilder
from compiler.tflite.derive import derive_params, uniform_constant
from compiler.tflite.errors import TfliteLoweringError
from compiler.tflite.qdq import QuantPlan, WeightParams

_OP = tflite.BuiltinOperator
IO_TYPES = ("float", "int8")

# Output must carry input 0's parameters (the kernel moves or picks int8 values, it never rescales).
SAME_PARAMS = frozenset({
    _OP.RESHAPE, _OP.TRANSPOSE, _OP.PAD, _OP.PADV2, _OP.MAX_POOL_2D, _OP.AVERAGE_POOL_2D, _OP.STRIDED_SLICE,
    _OP.SPLIT_V, _OP.RESIZE_BILINEAR, _OP.RESIZE_NEAREST_NEIGHBOR, _OP.GATHER,
})
# Every input and the output share one set of parameters.
ALL_SAME = frozenset({_OP.CONCATENATION, _OP.MINIMUM, _OP.MAXIMUM})
# The spec fixes the output parameters.
FIXED = {
    _OP.SOFTMAX: Quantization((1 / 256,), (-128,)),
    _OP.LOGISTIC: Quantization((1 / 256,), (-128,)),
    _OP.TANH: Quantization((1 / 128,), (0,)),
}
# Requantize freely between input and output parameters.
FREE = frozenset({
    _OP.ADD, _OP.SUB, _OP.MUL, _OP.MEAN, _OP.RELU, _OP.RELU6, _OP.RELU_N1_TO_1, _OP.LEAKY_RELU, _OP.HARD_SWISH,
    _OP.BATCH_MATMUL,
})


@dataclass(frozen=True)
class _Slots:
    """Where a weighted op takes its activation, weights and bias, and the weights' output-channel
    axis (TFLite's quantized_dimension)."""

    x: int
    weight: int
    bias: int
    channel_axis: int


# CONV_2D (grouped too) and FULLY_CONNECTED weights are [O, ...], DEPTHWISE_CONV_2D [1, H, W, O];
# TRANSPOSE_CONV takes (output shape, OHWI weights, x, bias).
_WEIGHTED_SLOTS = {
    _OP.CONV_2D: _Slots(0, 1, 2, 0), _OP.DEPTHWISE_CONV_2D: _Slots(0, 1, 2, 3), _OP.FULLY_CONNECTED: _Slots(0, 1, 2, 0),
    _OP.TRANSPOSE_CONV: _Slots(2, 1, 3, 0),
}
WEIGHTED = frozenset(_WEIGHTED_SLOTS)
INT8_OPS = SAME_PARAMS | ALL_SAME | set(FIXED) | FREE | WEIGHTED


def per_tensor(scale: float, zero_point: int) -> Quantization:
    return Quantization((float(np.float32(scale)),), (int(zero_point),))


def exact_params(value: float) -> Quantization:
    """Per-tensor parameters that hold ``value`` exactly: ±127 steps of |value|/127 (1.0 for zero)."""
    return per_tensor(abs(value) / 127 if value else 1.0, 0)


@dataclass
class _Pass:
    builder: TfliteBuilder
    plan: QuantPlan
    nodes: dict[str, onnx.NodeProto]
    params: dict[int, Quantization]  # activation tensor → the int8 parameters it will carry
    ops: list[Operator]
    dequantized: dict[int, int]  # int8 tensor → its float view (DEQUANTIZE), shared by float ops
    converted: dict[tuple[int, Quantization], int]  # float constant → its int8 copy
    unscaled: dict[int, int] = field(default_factory=dict)  # FIXED op output → its spec-params tensor
    outputs: set[int] = field(default_factory=set)  # the graph's outputs (never aliased away)
    aliases: dict[int, int] = field(default_factory=dict)  # output of a dropped no-op → its input

    # ---- helpers -----------------------------------------------------------------------------

    def emit(self, opcode: int, inputs: list[int], outputs: list[int]) -> None:
        self.ops.append(self.builder.make_operator(opcode, inputs, outputs))

    def like(self, tensor: int, suffix: str, dtype: type, q: Quantization | None = None) -> int:
        """A new activation tensor shaped like ``tensor``."""
        t = self.builder.tensors[tensor]
        new = self.builder.add_tensor(f"{t.name}_{suffix}", t.shape, dtype)
        self.builder.tensors[new].signature = t.signature
        if q is not None:
            self.params[new] = q
        return new

    def is_activation(self, tensor: int) -> bool:
        t = self.builder.tensors[tensor]
        return not self.builder.is_constant(tensor) and t.dtype == np.float32

    def float_constant(self, tensor: int) -> bool:
        t = self.builder.tensors[tensor]
        return self.builder.is_constant(tensor) and t.dtype == np.float32

    def weight_params(self, tensor: int) -> WeightParams | None:
        source = self.builder.tensors[tensor].source
        return self.plan.weights.get(source) if source is not None else None

    def requantize(self, tensor: int, q: Quantization) -> int:
        """``tensor`` (int8) with parameters ``q``: itself, or a QUANTIZE into a new tensor."""
        if self.params[tensor] == q:
            return tensor
        out = self.like(tensor, "requantized", np.int8, q)
        self.emit(_OP.QUANTIZE, [tensor], [out])
        return out

    def constant_int8(self, tensor: int, q: Quantization) -> int:
        """An int8 copy of float constant ``tensor`` quantized with ``q`` (per tensor)."""
        key = (tensor, q)
        if key not in self.converted:
            data = self.builder.constant_data(tensor)
            t = self.builder.tensors[tensor]
            scale = np.float32(q.scale[0])
            # Clip first: a fill such as the lowest float would overflow the division.
            data = np.clip(data, -256 * scale, 256 * scale)
            quantized = np.clip(np.round(data / scale) + q.zero_point[0], -128, 127)
            new = self.builder.add_constant(f"{t.name}_int8", quantized.astype(np.int8))
            self.builder.tensors[new].quantization = q
            self.converted[key] = new
        return self.converted[key]

    # ---- classification ----------------------------------------------------------------------

    def int8_reason(self, op: Operator) -> str | None:
        """Why ``op`` must run in float (None when it can run in int8)."""
        if op.opcode not in INT8_OPS:
            return "no int8 kernel is used for it"
        for i, tensor in enumerate(op.inputs):
            if tensor < 0:
                continue
            if self.is_activation(tensor) and tensor not in self.params:
                return f"input {i} is not quantized in the QDQ graph"
            if self.float_constant(tensor) and not self._constant_ok(op, i, tensor):
                return f"constant input {i} has no per-tensor parameters in the QDQ graph"
        if op.opcode not in SAME_PARAMS and any(out not in self.params for out in op.outputs):
            return "its output is not quantized in the QDQ graph"
        return None

    def _constant_ok(self, op: Operator, index: int, tensor: int) -> bool:
        if op.opcode in WEIGHTED:
            return index == _WEIGHTED_SLOTS[op.opcode].bias or self._weight(op) is not None
        if op.opcode == _OP.PADV2 or op.opcode in ALL_SAME:
            return True  # quantized with the parameters the op shares
        w = self.weight_params(tensor)
        if w is None:  # a constant of the lowering's own (HardSigmoid's alpha, Div's 1/c): exact if uniform
            return uniform_constant(self.builder, tensor) is not None
        return w.axis is None

    def _weight(self, op: Operator) -> WeightParams | None:
        node = self.nodes.get(op.node or "")
        return self.plan.weights.get(node.input[1]) if node is not None and len(node.input) > 1 else None

    # ---- lowering one operator ---------------------------------------------------------------

    def visit(self, op: Operator) -> None:
        op.inputs = [self.aliases.get(t, t) for t in op.inputs]
        reason = self.int8_reason(op)
        if reason is None and self._no_op_clamp(op):
            self.aliases[op.outputs[0]] = op.inputs[0]
        elif reason is None:
            self.int8_op(op)
        else:
            self.float_op(op)

    def _no_op_clamp(self, op: Operator) -> bool:
        """MINIMUM / MAXIMUM with a constant bound that int8 saturation already applies (HardSigmoid's
        min(·, 1) when the output's range ends at or below 1): nothing to run."""
        if op.opcode not in (_OP.MINIMUM, _OP.MAXIMUM) or op.outputs[0] in self.outputs:
            return False
        x, bound = op.inputs
        value = uniform_constant(self.builder, bound)
        q = self.params.get(op.outputs[0])
        if value is None or q is None or self.params.get(x) != q:
            return False
        scale, zero_point = q.scale[0], q.zero_point[0]
        if op.opcode == _OP.MINIMUM:
            return value >= scale * (127 - zero_point)
        return value <= scale * (-128 - zero_point)

    def float_op(self, op: Operator) -> None:
        for i, tensor in enumerate(op.inputs):
            if tensor >= 0 and tensor in self.params:
                if tensor not in self.dequantized:
                    view = self.like(tensor, "dequantized", np.float32)
                    self.emit(_OP.DEQUANTIZE, [tensor], [view])
                    self.dequantized[tensor] = view
                op.inputs[i] = self.dequantized[tensor]
        after: list[tuple[int, int]] = []
        for i, tensor in enumerate(op.outputs):
            if tensor in self.params:
                temp = self.like(tensor, "float", np.float32)
                op.outputs[i] = temp
                after.append((temp, tensor))
        self.ops.append(op)
        for temp, tensor in after:
            self.emit(_OP.QUANTIZE, [temp], [tensor])

    def int8_op(self, op: Operator) -> None:
        b = self.builder
        if op.opcode in FREE:
            op.inputs = [self.unscaled.get(t, t) for t in op.inputs]
        if op.opcode in WEIGHTED:
            self._weighted(op)
        elif op.opcode in ALL_SAME or op.opcode == _OP.PADV2:
            # A PADV2 fill outside the input's range (Pad's constant_value) needs the output's.
            q = self.params.get(op.outputs[0], self.params[op.inputs[0]])
            for i, tensor in enumerate(op.inputs):
                if tensor >= 0 and b.is_constant(tensor) and b.tensors[tensor].dtype == np.float32:
                    op.inputs[i] = self.constant_int8(tensor, q)
                elif tensor >= 0 and tensor in self.params:
                    op.inputs[i] = self.requantize(tensor, q)
        else:
            for i, tensor in enumerate(op.inputs):
                if tensor < 0 or not self.float_constant(tensor):
                    continue
                w = self.weight_params(tensor)
                if w is None:
                    value = uniform_constant(b, tensor)
                    assert value is not None
                    op.inputs[i] = self.constant_int8(tensor, exact_params(value))
                else:
                    op.inputs[i] = self.constant_int8(tensor, per_tensor(float(w.scale), int(w.zero_point)))
        after: list[tuple[int, int]] = []
        for i, tensor in enumerate(op.outputs):
            want = self._output_params(op)
            if want is None:
                continue
            if tensor not in self.params:
                self.params[tensor] = want
            elif self.params[tensor] != want:
                temp = self.like(tensor, "unscaled", np.int8, want)
                op.outputs[i] = temp
                after.append((temp, tensor))
                if op.opcode in FIXED:
                    self.unscaled[tensor] = temp
        self.ops.append(op)
        for temp, tensor in after:
            self.emit(_OP.QUANTIZE, [temp], [tensor])

    def _output_params(self, op: Operator) -> Quantization | None:
        if op.opcode in SAME_PARAMS:
            return self.params[op.inputs[0]]
        return FIXED.get(op.opcode)

    def _weighted(self, op: Operator) -> None:
        b = self.builder
        w = self._weight(op)
        assert w is not None
        slots = _WEIGHTED_SLOTS[op.opcode]
        x, weight, axis = op.inputs[slots.x], op.inputs[slots.weight], slots.channel_axis
        bias = op.inputs[slots.bias] if len(op.inputs) > slots.bias else -1
        data = b.constant_data(weight)
        if w.axis is not None and w.scale.size != data.shape[axis]:
            raise TfliteLoweringError(
                f"'{op.node}': {w.scale.size} per-channel weight scales for {data.shape[axis]} output channels; "
                "TFLite quantizes weights along the output channel"
            )
        scale = np.broadcast_to(w.scale.astype(np.float32), (data.shape[axis],)) if w.axis is not None else (
            w.scale.reshape(1).astype(np.float32))
        per_channel, exact = w.axis is not None, True
        if np.any(w.zero_point != 0):
            if per_channel:
                raise TfliteLoweringError(
                    f"'{op.node}': TFLite int8 weights are symmetric, the QDQ graph has per-channel zero points"
                )
            # onnxruntime quantizes an initializer that reaches the conv through a Reshape/Transpose
            # (qdq.carry_weights) like an activation: per tensor, with a zero point. TFLite's kernels
            # take symmetric weights: per channel, onnxruntime's step where the channel's integers fit.
            scale, per_channel, exact = _symmetric_scales(data, float(w.scale.reshape(-1)[0]), axis), True, False
        node = self.nodes[op.node or ""]
        if node.op_type == "Gemm":  # alpha scales the weights: it scales their int8 scales instead
            alpha = next((a.f for a in node.attribute if a.name == "alpha"), 1.0)
            scale = (scale * np.float32(alpha)).astype(np.float32)
        shape = [1] * data.ndim
        shape[axis] = -1
        per = scale.reshape(shape) if per_channel else scale[0]
        q = np.round(data / per)
        # The integers are onnxruntime's exactly when the lowering only moved them (transpose);
        # alpha may leave one rounding of float32 between q·s·alpha and q·(s·alpha).
        if exact and np.abs(q * per - data).max(initial=0) > 1e-6 * np.abs(data).max(initial=0):
            raise TfliteLoweringError(
                f"'{op.node}': the lowering changed the quantized weights (a BatchNormalization folded into "
                "the conv?); fold it before quantizing, as compile's prepare step does"
            )
        b.replace_constant(weight, np.clip(q, -127, 127).astype(np.int8))
        b.tensors[weight].quantization = Quantization(
            tuple(float(s) for s in scale), (0,) * scale.size, axis if per_channel else 0
        )
        in_scale = np.float32(self.params[x].scale[0])
        bias_scale = (in_scale * scale).astype(np.float32)
        if bias >= 0:
            bias_data = b.constant_data(bias)
            b.replace_constant(bias, np.round(bias_data / bias_scale).astype(np.int32))
        else:  # TFLite's int8 kernels accept no bias; keep the slot empty
            return
        b.tensors[bias].quantization = Quantization(
            tuple(float(s) for s in bias_scale), (0,) * bias_scale.size, 0
        )


def _symmetric_scales(data: np.ndarray, step: float, axis: int) -> np.ndarray:
    """Per-channel scales for ``data`` = step·k (integer k, from an asymmetric int8 weight): ``step``
    itself where the channel's |k| ≤ 127 (exact), else the smallest scale that fits it."""
    others = tuple(i for i in range(data.ndim) if i != axis)
    widest = np.abs(np.round(data / np.float32(step))).max(axis=others, initial=0)
    return (np.float32(step) * np.maximum(widest / 127, 1)).astype(np.float32)


def quantize_builder(
    builder: TfliteBuilder,
    plan: QuantPlan,
    nodes: dict[str, onnx.NodeProto],
    inputs: list[int],
    outputs: list[int],
    io: str = "float",
) -> tuple[list[int], list[int]]:
    """Rewrite ``builder`` to int8 in place; returns the (possibly new) graph inputs and outputs."""
    if io not in IO_TYPES:
        raise TfliteLoweringError(f"io={io!r}: choose one of {', '.join(IO_TYPES)}")
    params = {
        i: per_tensor(plan.activations[t.source].scale, plan.activations[t.source].zero_point)
        for i, t in enumerate(builder.tensors)
        if t.source in plan.activations and builder.tensors[i].buffer == 0 and t.dtype == np.float32
    }
    _divisions_as_products(builder)
    derive_params(builder, params, outputs, SAME_PARAMS, ALL_SAME)
    p = _Pass(builder, plan, nodes, params, [], {}, {}, outputs=set(outputs))

    def float_edge(tensor: int) -> int:
        """A float32 tensor that takes over ``tensor``'s graph name; ``tensor`` stays int8 inside."""
        outer = p.like(tensor, "float", np.float32)
        builder.tensors[outer].name = builder.tensors[tensor].name
        builder.tensors[tensor].name += "_int8"
        return outer

    new_inputs = []
    for tensor in inputs:
        if tensor in p.params and io == "float":
            new_inputs.append(float_edge(tensor))
            p.emit(_OP.QUANTIZE, [new_inputs[-1]], [tensor])
        else:
            new_inputs.append(tensor)
    for op in list(builder.operators):
        p.visit(op)
    new_outputs = []
    for tensor in outputs:
        if tensor in p.params and io == "float":
            new_outputs.append(float_edge(tensor))
            p.emit(_OP.DEQUANTIZE, [tensor], [new_outputs[-1]])
        else:
            new_outputs.append(tensor)
    for tensor, q in p.params.items():
        builder.tensors[tensor].dtype = np.dtype(np.int8)
        builder.tensors[tensor].quantization = q
    builder.operators = _without_dead_quantize(p.ops, set(new_outputs))
    return new_inputs, new_outputs


def _divisions_as_products(builder: TfliteBuilder) -> None:
    """DIV by a uniform constant c → MUL by 1/c: TFLite has no int8 DIV, and an int8 MUL by c's
    exact int8 form rounds once, as onnxruntime's QuantizeLinear after its float Div does."""
    for op in builder.operators:
        if op.opcode != _OP.DIV or len(op.inputs) != 2:
            continue
        value = uniform_constant(builder, op.inputs[1])
        if not value:
            continue
        t = builder.tensors[op.inputs[1]]
        data = np.full(t.shape, np.float32(1) / np.float32(value), dtype=np.float32)
        reciprocal = builder.add_constant(f"{t.name}_reciprocal", data)
        fields = dict(op.options.fields) if op.options is not None else {}
        mul = builder.make_operator(_OP.MUL, [op.inputs[0], reciprocal], op.outputs, Options("MulOptions", fields))
        op.opcode, op.inputs, op.options = mul.opcode, mul.inputs, mul.options  # in place: op keeps its node


def _without_dead_quantize(ops: list[Operator], outputs: set[int]) -> list[Operator]:
    read = {t for op in ops for t in op.inputs} | outputs
    return [op for op in ops if op.opcode != _OP.QUANTIZE or op.outputs[0] in read]
