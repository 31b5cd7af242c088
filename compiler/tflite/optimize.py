"""Peephole rewrites over the built TFLite operator list: fewer TRANSPOSEs, same outputs.

Lowering one ONNX node at a time leaves layout changes that cancel or merge across nodes (a
Transpose in the ONNX graph next to the NHWC↔NCHW TRANSPOSE the context inserts, a softmax over a
middle axis). Each rule is a small (pattern, rewrite) pair over the operator list; they run until
none applies:

    transpose ∘ transpose     → one TRANSPOSE with the composed perm, or nothing if it is the identity
    transpose of size-1 dims  → RESHAPE (the element order does not change)
    reshape ∘ reshape         → one RESHAPE
    unary ∘ transpose         → transpose ∘ unary, when a TRANSPOSE follows (so the two can merge)

A rule only touches a tensor that nothing else reads and that is not a graph output.

    removed = optimize(builder, inputs, outputs)   # builder.operators rewritten in place
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import tflite

from compiler.tflite.builder import Operator, TfliteBuilder

_OP = tflite.BuiltinOperator
# Ops that act on each element alone, so they commute with any transpose.
_UNARY = {
    _OP.LOGISTIC, _OP.TANH, _OP.RELU, _OP.RELU6, _OP.RELU_N1_TO_1, _OP.LEAKY_RELU, _OP.HARD_SWISH, _OP.SQRT,
    _OP.ABS, _OP.NEG, _OP.EXP,
}


@dataclass
class _Graph:
    builder: TfliteBuilder
    outputs: set[int]

    @property
    def ops(self) -> list[Operator]:
        return self.builder.operators

    def readers(self, tensor: int) -> list[Operator]:
        return [op for op in self.ops if tensor in op.inputs]

    def only_reader(self, tensor: int) -> Operator | None:
        """The single operator reading ``tensor``, if it is not also a graph output."""
        readers = self.readers(tensor)
        return readers[0] if len(readers) == 1 and tensor not in self.outputs else None

    def perm(self, op: Operator) -> list[int]:
        return [int(p) for p in self.builder.constant_data(op.inputs[1])]

    def int32(self, values: list[int]) -> int:
        return self.builder.add_constant(f"const_{len(self.builder.tensors)}", np.asarray(values, dtype=np.int32))

    def index(self, op: Operator) -> int:
        """Where ``op`` is, by identity (Operator is a dataclass: == compares every field)."""
        return next(i for i, other in enumerate(self.ops) if other is op)

    def remove(self, op: Operator) -> None:
        del self.ops[self.index(op)]

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
        # The first rewrite ends the pass, so every operator looked at is still in the list.
        changed = any(rule(graph, op) for rule in _RULES for op in list(graph.ops))
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
    reshape = g.builder.add_operator(_OP.RESHAPE, [op.inputs[0], g.int32(target)], op.outputs)
    g.ops.pop()  # add_operator appended it; it takes the TRANSPOSE's place instead
    g.ops[g.index(op)] = reshape
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
    unary.inputs, unary.outputs = [x], [moved]
    transpose.inputs, transpose.outputs = [moved, transpose.inputs[1]], [y]
    i, j = g.index(transpose), g.index(unary)
    g.ops[i], g.ops[j] = unary, transpose
    return True


_RULES: list[Rule] = [_merge_transposes, _transpose_to_reshape, _merge_reshapes, _sink_transpose_below_unary]
