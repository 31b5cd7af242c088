"""Peephole rewrites over the built TFLite operator list: fewer TRANSPOSEs (and ops), same outputs.

Lowering one ONNX node at a time leaves layout changes that cancel or merge across nodes (a
Transpose in the ONNX graph next to the NHWC↔NCHW TRANSPOSE the context inserts, a softmax over a
middle axis). Each rule is a small (pattern, rewrite) pair over the operator list; they run until
none applies:

    transpose ∘ transpose     → one TRANSPOSE with the composed perm, or nothing if it is the identity
    transpose of size-1 dims  → RESHAPE (the element order does not change)
    reshape ∘ reshape         → one RESHAPE
    unary ∘ transpose         → transpose ∘ unary, when a TRANSPOSE follows (so the two can merge)
    reshape ∘ transpose       → transpose ∘ reshape, when the reshape merges dims the transpose kept together
    concat of transposes      → transpose of the concat, when every input has the same perm
    x·relu6(x + 3) / 6        → HARD_SWISH (how Paddle exports hardswish)

A rule only touches a tensor that nothing else reads and that is not a graph output.

    removed = optimize(builder, inputs, outputs)   # builder.operators rewritten in place
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import tflite

from compiler.tflite.builder import Operator, TfliteBuilder

_OP = tflite.BuiltinOperator
_ACT = tflite.ActivationFunctionType
# Ops that act on each element alone, so they commute with any transpose.
_UNARY = {
    _OP.LOGISTIC, _OP.TANH, _OP.RELU, _OP.RELU6, _OP.RELU_N1_TO_1, _OP.LEAKY_RELU, _OP.HARD_SWISH, _OP.SQRT,
    _OP.ABS, _OP.NEG, _OP.EXP,
}


@dataclass
class _Graph:
    builder: TfliteBuilder
    outputs: set[int]
    removed: set[int] = field(default_factory=set)  # id() of operators taken out

    @property
    def ops(self) -> list[Operator]:
        return self.builder.operators

    def readers(self, tensor: int) -> list[Operator]:
        return [op for op in self.ops if tensor in op.inputs]

    def only_reader(self, tensor: int) -> Operator | None:
        """The single operator reading ``tensor``, if it is not also a graph output."""
        readers = self.readers(tensor)
        return readers[0] if len(readers) == 1 and tensor not in self.outputs else None

    def producer(self, tensor: int) -> Operator | None:
        return next((op for op in self.ops if tensor in op.outputs), None)

    def constant_value(self, tensor: int) -> float | None:
        """The value of a float constant whose elements are all equal, else None."""
        if tensor < 0 or self.builder.tensors[tensor].buffer == 0:
            return None
        data = self.builder.constant_data(tensor)
        if data.dtype != np.float32 or data.size == 0 or not np.all(data == data.flat[0]):
            return None
        return float(data.flat[0])

    def perm(self, op: Operator) -> list[int]:
        return [int(p) for p in self.builder.constant_data(op.inputs[1])]

    def int32(self, values: list[int]) -> int:
        return self.builder.add_constant(f"const_{len(self.builder.tensors)}", np.asarray(values, dtype=np.int32))

    def index(self, op: Operator) -> int:
        """Where ``op`` is, by identity (Operator is a dataclass: == compares every field)."""
        return next(i for i, other in enumerate(self.ops) if other is op)

    def remove(self, op: Operator) -> None:
        del self.ops[self.index(op)]
        self.removed.add(id(op))

    def replace(self, old: Operator, new: Operator) -> None:
        """``new`` (just appended by ``builder.add_operator``) takes ``old``'s place."""
        assert self.ops[-1] is new
        self.ops.pop()
        self.ops[self.index(old)] = new
        self.removed.add(id(old))

    def replace_reads(self, old: int, new: int) -> None:
        for op in self.ops:
            op.inputs = [new if t == old else t for t in op.inputs]


Rule = Callable[[_Graph, Operator], bool]


def optimize(builder: TfliteBuilder, inputs: list[int], outputs: list[int]) -> int:
    """Apply the rules until none applies; the number of TRANSPOSE operators removed."""
    graph = _Graph(builder, set(outputs))
    before = _count(builder)
    changed = True
    while changed:
        changed = False
        for op in list(graph.ops):
            for rule in _RULES:
                if id(op) not in graph.removed and rule(graph, op):
                    changed = True
    return before - _count(builder)


def _count(builder: TfliteBuilder) -> int:
    return sum(op.opcode == _OP.TRANSPOSE for op in builder.operators)


def _merge_transposes(g: _Graph, first: Operator) -> bool:
    if first.opcode != _OP.TRANSPOSE:
        return False
    second = g.only_reader(first.outputs[0])
    if second is None or second.opcode != _OP.TRANSPOSE:
        return False
    p1, p2 = g.perm(first), g.perm(second)
    composed = [p1[i] for i in p2]
    g.remove(first)
    if composed == list(range(len(composed))) and second.outputs[0] not in g.outputs:
        g.remove(second)
        g.replace_reads(second.outputs[0], first.inputs[0])
    else:
        second.inputs = [first.inputs[0], g.int32(composed)]
    return True


def _transpose_to_reshape(g: _Graph, op: Operator) -> bool:
    if op.opcode != _OP.TRANSPOSE:
        return False
    source = g.builder.tensors[op.inputs[0]]
    shape = source.signature if source.signature is not None else source.shape  # a dynamic batch is -1, not 1
    perm = g.perm(op)
    moved = [p for p in perm if shape[p] != 1]
    if moved != sorted(moved):
        return False
    out = g.builder.tensors[op.outputs[0]]
    target = list(out.signature) if out.signature is not None else list(out.shape)
    if target.count(-1) > 1:
        return False
    g.replace(op, g.builder.add_operator(_OP.RESHAPE, [op.inputs[0], g.int32(target)], op.outputs))
    return True


def _merge_reshapes(g: _Graph, first: Operator) -> bool:
    if first.opcode != _OP.RESHAPE:
        return False
    second = g.only_reader(first.outputs[0])
    if second is None or second.opcode != _OP.RESHAPE or second.inputs[0] != first.outputs[0]:
        return False
    g.remove(first)
    second.inputs = [first.inputs[0], *second.inputs[1:]]
    return True


def _sink_transpose_below_unary(g: _Graph, transpose: Operator) -> bool:
    """TRANSPOSE → unary → TRANSPOSE becomes unary → TRANSPOSE → TRANSPOSE, which then merge."""
    if transpose.opcode != _OP.TRANSPOSE:
        return False
    unary = g.only_reader(transpose.outputs[0])
    if unary is None or unary.opcode not in _UNARY or len(unary.inputs) != 1:
        return False
    after = g.only_reader(unary.outputs[0])
    if after is None or after.opcode != _OP.TRANSPOSE:
        return False
    x, moved, y = transpose.inputs[0], transpose.outputs[0], unary.outputs[0]
    tensors = g.builder.tensors
    # ``moved`` now holds unary(x) in x's layout; ``y`` the transposed result, as before.
    tensors[moved].shape, tensors[moved].signature = tensors[x].shape, tensors[x].signature
    # It holds the unary op's value now (in another layout): the int8 pass reads its parameters by source.
    tensors[moved].source = tensors[y].source
    unary.inputs, unary.outputs = [x], [moved]
    transpose.inputs, transpose.outputs = [moved, transpose.inputs[1]], [y]
    i, j = g.index(transpose), g.index(unary)
    g.ops[i], g.ops[j] = unary, transpose
    return True


def _reshape_before_transpose(g: _Graph, transpose: Operator) -> bool:
    """TRANSPOSE → RESHAPE that only merges dims which were neighbours, in order, before the transpose
    (NHWC → NCHW → [N, C, H·W]) becomes RESHAPE → TRANSPOSE of the merged dims ([N, H·W, C] → [N, C, H·W]).
    Same count; it moves the TRANSPOSE down to where it can merge or pass a CONCATENATION."""
    if transpose.opcode != _OP.TRANSPOSE:
        return False
    reshape = g.only_reader(transpose.outputs[0])
    if reshape is None or reshape.opcode != _OP.RESHAPE or reshape.inputs[0] != transpose.outputs[0]:
        return False
    tensors = g.builder.tensors
    x, y = transpose.inputs[0], reshape.outputs[0]
    source, target = tensors[x], tensors[y]
    if source.signature is not None or target.signature is not None:
        return False
    perm = g.perm(transpose)
    groups = _merged_groups([source.shape[p] for p in perm], target.shape)
    if groups is None:
        return False
    runs = [[perm[i] for i in group] for group in groups]
    if any(run != list(range(run[0], run[0] + len(run))) for run in runs):
        return False
    order = sorted(range(len(runs)), key=lambda k: runs[k][0])  # the groups in the source's order
    merged = tuple(int(np.prod([source.shape[d] for d in runs[k]])) for k in order)
    between = g.builder.add_tensor(f"{source.name}_merged", merged, source.dtype)
    reshape.inputs, reshape.outputs = [x, g.int32(list(merged))], [between]
    transpose.inputs, transpose.outputs = [between, g.int32([order.index(k) for k in range(len(runs))])], [y]
    i, j = g.index(transpose), g.index(reshape)
    g.ops[i], g.ops[j] = reshape, transpose
    return True


def _merged_groups(dims: list[int], target: tuple[int, ...]) -> list[list[int]] | None:
    """Split ``dims`` into consecutive non-empty runs whose products are ``target``, else None."""
    groups: list[list[int]] = []
    i = 0
    for size in target:
        if i == len(dims):
            return None
        run, product = [i], dims[i]
        i += 1
        while product < size and i < len(dims):
            product *= dims[i]
            run.append(i)
            i += 1
        if product != size:
            return None
        groups.append(run)
    return groups if i == len(dims) else None


def _transpose_below_concat(g: _Graph, concat: Operator) -> bool:
    """CONCATENATION of TRANSPOSEs with one perm → one TRANSPOSE of the CONCATENATION."""
    if concat.opcode != _OP.CONCATENATION or concat.options is None:
        return False
    producers = [g.producer(t) for t in concat.inputs]
    if any(p is None or p.opcode != _OP.TRANSPOSE or g.only_reader(p.outputs[0]) is not concat for p in producers):
        return False
    transposes = [p for p in producers if p is not None]
    if len({id(t) for t in transposes}) != len(transposes):
        return False
    perm = g.perm(transposes[0])
    if len(transposes) < 2 or any(g.perm(t) != perm for t in transposes[1:]):
        return False
    tensors = g.builder.tensors
    if any(tensors[t].signature is not None for t in concat.outputs):
        return False
    out = tensors[concat.outputs[0]]
    inverse = [perm.index(i) for i in range(len(perm))]
    joined = g.builder.add_tensor(f"{out.name}_joined", tuple(out.shape[i] for i in inverse), out.dtype)
    g.builder.tensors[joined].source = out.source  # the same value, so int8 gives it the same parameters
    axis = int(concat.options.fields["Axis"])
    concat.options.fields["Axis"] = perm[axis if axis >= 0 else axis + len(perm)]
    after = g.builder.add_operator(_OP.TRANSPOSE, [joined, g.int32(perm)], list(concat.outputs))
    g.ops.pop()
    concat.inputs, concat.outputs = [t.inputs[0] for t in transposes], [joined]
    for t in transposes:
        g.remove(t)
    g.ops.insert(g.index(concat) + 1, after)
    return True


def _hard_swish(g: _Graph, add: Operator) -> bool:
    """ADD(x, 3) with a fused RELU6 → MUL by x → DIV by 6 (Paddle's hardswish) → one HARD_SWISH."""
    if add.opcode != _OP.ADD or add.options is None or add.options.fields.get("FusedActivationFunction") != _ACT.RELU6:
        return False
    x = next((t for t in add.inputs if g.constant_value(t) is None), None)
    if x is None or [g.constant_value(t) for t in add.inputs if t != x] != [3.0]:
        return False
    mul = g.only_reader(add.outputs[0])
    if mul is None or mul.opcode != _OP.MUL or sorted(mul.inputs) != sorted([x, add.outputs[0]]) or _fused(mul):
        return False
    div = g.only_reader(mul.outputs[0])
    if div is None or div.opcode != _OP.DIV or div.inputs[0] != mul.outputs[0] or _fused(div):
        return False
    if g.constant_value(div.inputs[1]) != 6.0:
        return False
    g.replace(div, g.builder.add_operator(_OP.HARD_SWISH, [x], list(div.outputs)))
    g.remove(add)
    g.remove(mul)
    return True


def _fused(op: Operator) -> bool:
    return op.options is not None and op.options.fields.get("FusedActivationFunction", _ACT.NONE) != _ACT.NONE


_RULES: list[Rule] = [
    _merge_transposes, _transpose_to_reshape, _merge_reshapes, _sink_transpose_below_unary, _reshape_before_transpose,
    _transpose_below_concat, _hard_swish,
]
