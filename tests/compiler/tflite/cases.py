"""Conformance cases: one small ONNX graph per op, with the tolerance a backend must meet.

Backend-neutral on purpose (an ONNX model, its inputs and a tolerance with its reason), in
the spirit of onnx's ``backend/test/case/node``: another backend can run the same list.
Expected outputs come from onnxruntime at test time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
F = TensorProto.FLOAT


@dataclass(frozen=True)
class Case:
    op: str
    name: str
    model: onnx.ModelProto
    inputs: dict[str, np.ndarray]
    rtol: float
    atol: float
    why: str  # the reason for the tolerance

    def __str__(self) -> str:
        return self.name


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _model(
    nodes: list[onnx.NodeProto],
    x_shape: list[int | str],
    y_shape: list[int | str] | None,
    inits: dict[str, np.ndarray] | None = None,
    opset: int = OPSET,
) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "case",
        [helper.make_tensor_value_info("x", F, x_shape)],
        [helper.make_tensor_value_info("y", F, y_shape)],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in (inits or {}).items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _x(shape: tuple[int, ...], seed: int = 0) -> dict[str, np.ndarray]:
    return {"x": _rng(seed).standard_normal(shape).astype(np.float32)}


# Sums of a few dozen fp32 products, accumulated in another order than onnxruntime's.
_ACCUMULATE = "fp32 dot products accumulated in a different order (and by XNNPACK's kernels)"
_EXACT = "no arithmetic beyond one correctly rounded fp32 op per element"
_TRANSCENDENTAL = "exp/tanh approximations differ between the two runtimes by a few ulp"


def conv() -> list[Case]:
    r = _rng(1)
    w, b = r.standard_normal((4, 3, 3, 3)), r.standard_normal(4)
    same = helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1])
    strided = helper.make_node("Conv", ["x", "w"], ["y"], pads=[0, 1, 2, 1], strides=[2, 2])
    return [
        Case("Conv", "conv_same_pads_bias", _model([same], ["N", 3, 7, 7], None, {"w": w, "b": b}),
             _x((2, 3, 7, 7)), 1e-5, 1e-5, _ACCUMULATE),
        Case("Conv", "conv_asymmetric_pads_stride2", _model([strided], [1, 3, 7, 7], None, {"w": w}),
             _x((1, 3, 7, 7)), 1e-5, 1e-5, _ACCUMULATE),
    ]


def relu() -> list[Case]:
    w = _rng(2).standard_normal((4, 3, 3, 3))
    fused = [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Relu", ["c"], ["y"])]
    alone = [helper.make_node("Relu", ["x"], ["y"])]
    return [
        Case("Relu", "relu_fused_into_conv", _model(fused, [1, 3, 6, 6], None, {"w": w}), _x((1, 3, 6, 6)),
             1e-5, 1e-5, _ACCUMULATE),
        Case("Relu", "relu", _model(alone, [2, 5], None), _x((2, 5)), 0, 0, _EXACT),
    ]


def max_pool() -> list[Case]:
    valid = helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2])
    padded = helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[3, 3], pads=[1, 0, 0, 1])
    return [
        Case("MaxPool", "maxpool_2x2", _model([valid], [1, 3, 6, 6], None), _x((1, 3, 6, 6)), 0, 0, _EXACT),
        Case("MaxPool", "maxpool_explicit_pads", _model([padded], [1, 3, 6, 6], None), _x((1, 3, 6, 6)), 0, 0,
             _EXACT),
    ]


def average_pool() -> list[Case]:
    same = helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    counted = helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                               count_include_pad=1)
    why = "a mean of ≤ 9 fp32 values, summed and divided in another order"
    return [
        Case("AveragePool", "avgpool_same_excludes_pad", _model([same], [1, 2, 5, 5], None), _x((1, 2, 5, 5)),
             1e-6, 1e-6, why),
        Case("AveragePool", "avgpool_count_include_pad", _model([counted], [1, 2, 5, 5], None),
             _x((1, 2, 5, 5)), 1e-6, 1e-6, why),
    ]


def global_average_pool() -> list[Case]:
    w = _rng(3).standard_normal((4, 2, 1, 1))
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("GlobalAveragePool", ["c"], ["y"])]
    return [Case("GlobalAveragePool", "gap_after_conv", _model(nodes, [2, 2, 5, 5], None, {"w": w}),
                 _x((2, 2, 5, 5)), 1e-5, 1e-6, "a mean of 25 fp32 values summed in another order")]


def gemm() -> list[Case]:
    r = _rng(4)
    node = helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1, alpha=0.5, beta=2.0)
    return [Case("Gemm", "gemm_transB_alpha_beta",
                 _model([node], ["N", 6], None, {"w": r.standard_normal((3, 6)), "b": r.standard_normal(3)}),
                 _x((4, 6)), 1e-5, 1e-5, _ACCUMULATE)]


def matmul() -> list[Case]:
    r = _rng(5)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "b"], ["y"])]
    bare = [helper.make_node("MatMul", ["x", "w"], ["y"])]
    inits = {"w": r.standard_normal((6, 3)), "b": r.standard_normal(3)}
    return [
        Case("MatMul", "matmul_add_bias_folded", _model(nodes, [4, 6], None, inits), _x((4, 6)), 1e-5, 1e-5,
             _ACCUMULATE),
        Case("MatMul", "matmul_no_bias", _model(bare, [4, 6], None, {"w": inits["w"]}), _x((4, 6)), 1e-5, 1e-5,
             _ACCUMULATE),
    ]


def flatten() -> list[Case]:
    w = _rng(6).standard_normal((3, 2, 1, 1))
    # After a conv the tensor is NHWC inside TFLite: this checks the flattened order is NCHW's.
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Flatten", ["c"], ["y"])]
    return [Case("Flatten", "flatten_after_conv_keeps_nchw_order", _model(nodes, [2, 2, 3, 4], None, {"w": w}),
                 _x((2, 2, 3, 4)), 1e-6, 1e-6, "two-term fp32 dot products")]


def reshape() -> list[Case]:
    w = _rng(7).standard_normal((3, 2, 1, 1))
    shape = np.array([0, -1], dtype=np.int64)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Reshape", ["c", "s"], ["y"])]
    graph = _model(nodes, [2, 2, 3, 4], None, {"w": w})
    graph.graph.initializer.append(numpy_helper.from_array(shape, "s"))
    return [Case("Reshape", "reshape_after_conv_zero_and_minus_one", graph, _x((2, 2, 3, 4)), 1e-6, 1e-6,
                 "two-term fp32 dot products")]


def add() -> list[Case]:
    w = _rng(8).standard_normal((3, 2, 1, 1))
    bias = _rng(9).standard_normal((3, 1, 1))
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Add", ["c", "k"], ["y"])]
    residual = [helper.make_node("Add", ["x", "x"], ["y"])]
    return [
        Case("Add", "add_channel_constant_to_nhwc", _model(nodes, [1, 2, 3, 3], None, {"w": w, "k": bias}),
             _x((1, 2, 3, 3)), 1e-6, 1e-6, "two-term fp32 dot products"),
        Case("Add", "add_two_activations", _model(residual, [2, 3], None), _x((2, 3)), 0, 0, _EXACT),
    ]


def mul() -> list[Case]:
    k = _rng(10).standard_normal((1, 4))
    return [Case("Mul", "mul_broadcast_row", _model([helper.make_node("Mul", ["x", "k"], ["y"])], [3, 4], None,
                                                       {"k": k}), _x((3, 4)), 0, 0, _EXACT)]


def softmax() -> list[Case]:
    node = helper.make_node("Softmax", ["x"], ["y"])
    legacy = helper.make_node("Softmax", ["x"], ["y"], axis=1)
    return [
        Case("Softmax", "softmax_13_last_axis", _model([node], [2, 10], None), _x((2, 10)), 1e-5, 1e-7,
             _TRANSCENDENTAL),
        Case("Softmax", "softmax_11_axis1_rank2", _model([legacy], [2, 10], None, opset=11), _x((2, 10)), 1e-5,
             1e-7, _TRANSCENDENTAL),
    ]


def sigmoid() -> list[Case]:
    return [Case("Sigmoid", "sigmoid", _model([helper.make_node("Sigmoid", ["x"], ["y"])], [2, 8], None),
                 _x((2, 8)), 1e-5, 1e-6, _TRANSCENDENTAL)]


def tanh() -> list[Case]:
    return [Case("Tanh", "tanh", _model([helper.make_node("Tanh", ["x"], ["y"])], [2, 8], None), _x((2, 8)),
                 1e-5, 1e-6, _TRANSCENDENTAL)]


def identity() -> list[Case]:
    nodes = [helper.make_node("Identity", ["x"], ["i"]), helper.make_node("Relu", ["i"], ["y"])]
    return [Case("Identity", "identity_removed", _model(nodes, [2, 3], None), _x((2, 3)), 0, 0, _EXACT)]


def dropout() -> list[Case]:
    nodes = [helper.make_node("Dropout", ["x"], ["d"], ratio=0.5), helper.make_node("Tanh", ["d"], ["y"])]
    return [Case("Dropout", "dropout_inference_removed", _model(nodes, [2, 3], None, opset=11), _x((2, 3)), 1e-5,
                 1e-6, _TRANSCENDENTAL)]


def constant() -> list[Case]:
    k = numpy_helper.from_array(_rng(11).standard_normal((1, 3)).astype(np.float32), "k")
    nodes = [helper.make_node("Constant", [], ["k"], value=k), helper.make_node("Mul", ["x", "k"], ["y"])]
    return [Case("Constant", "constant_folded_into_mul", _model(nodes, [2, 3], None), _x((2, 3)), 0, 0, _EXACT)]


CASE_BUILDERS: list[Callable[[], list[Case]]] = [
    conv, relu, max_pool, average_pool, global_average_pool, gemm, matmul, flatten, reshape, add, mul, softmax,
    sigmoid, tanh, identity, dropout, constant,
]


def all_cases() -> list[Case]:
    return [case for build in CASE_BUILDERS for case in build()]
