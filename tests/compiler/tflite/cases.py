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
    # fp16 (float16 weights): against onnxruntime on the graph with its constants rounded the same
    # way; None keeps the fp32 tolerance, which holds whenever the rounded constants are the same.
    fp16_tol: float | None = None
    fp16_why: str = ""

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
_SQRT = "LiteRT's (XNNPACK's) vector sqrt is within 1 ulp, measured off by one ulp on 20% of values"
_TRANSCENDENTAL = "exp/tanh approximations differ between the two runtimes by a few ulp"
_FOLDED_FP16 = ("the lowering folds BN into scale/shift (or weights) in float64 and rounds the folded constants "
                "to fp16; the reference rounds mean, variance, scale and bias separately")


def conv() -> list[Case]:
    r = _rng(1)
    w, b = r.standard_normal((4, 3, 3, 3)), r.standard_normal(4)
    same = helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1])
    strided = helper.make_node("Conv", ["x", "w"], ["y"], pads=[0, 1, 2, 1], strides=[2, 2])
    # Weights reaching the conv through a Reshape / Transpose that folding evaluates away.
    reshaped = [helper.make_node("Reshape", ["wf", "ws"], ["wr"]),
                helper.make_node("Conv", ["x", "wr", "b"], ["y"], pads=[1, 1, 1, 1])]
    transposed = [helper.make_node("Transpose", ["wt"], ["wr"], perm=[1, 0, 2, 3]),
                  helper.make_node("Conv", ["x", "wr"], ["y"], pads=[1, 1, 1, 1])]
    return [
        Case("Conv", "conv_same_pads_bias", _model([same], ["N", 3, 7, 7], None, {"w": w, "b": b}),
             _x((2, 3, 7, 7)), 1e-5, 1e-5, _ACCUMULATE),
        Case("Conv", "conv_asymmetric_pads_stride2", _model([strided], [1, 3, 7, 7], None, {"w": w}),
             _x((1, 3, 7, 7)), 1e-5, 1e-5, _ACCUMULATE),
        Case("Conv", "conv_weight_through_folded_reshape",
             _int64(_model(reshaped, [1, 3, 7, 7], None, {"wf": w.reshape(4, 27), "b": b}), ws=[4, 3, 3, 3]),
             _x((1, 3, 7, 7)), 1e-5, 1e-5, _ACCUMULATE),
        Case("Conv", "conv_weight_through_folded_transpose",
             _model(transposed, [1, 3, 7, 7], None, {"wt": w.transpose(1, 0, 2, 3)}), _x((1, 3, 7, 7)), 1e-5, 1e-5,
             _ACCUMULATE),
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
    plain = helper.make_node("Gemm", ["x", "w", "b"], ["y"])  # B is [in, out]: per-channel axis 1
    return [
        Case("Gemm", "gemm_transB_alpha_beta",
             _model([node], ["N", 6], None, {"w": r.standard_normal((3, 6)), "b": r.standard_normal(3)}),
             _x((4, 6)), 1e-5, 1e-5, _ACCUMULATE),
        Case("Gemm", "gemm_b_in_out",
             _model([plain], ["N", 6], None, {"w": r.standard_normal((6, 3)), "b": r.standard_normal(3)}),
             _x((4, 6)), 1e-5, 1e-5, _ACCUMULATE),
    ]


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
        Case("MatMul", "matmul_weight_through_folded_transpose",
             _model([helper.make_node("Transpose", ["wt"], ["wr"]), helper.make_node("MatMul", ["x", "wr"], ["y"])],
                    [4, 6], None, {"wt": inits["w"].T}), _x((4, 6)), 1e-5, 1e-5, _ACCUMULATE),
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
    before_mul = [helper.make_node("Identity", ["x"], ["i"]), helper.make_node("Mul", ["i", "k"], ["y"])]
    k = _rng(12).standard_normal((1, 3))
    return [
        Case("Identity", "identity_removed", _model(nodes, [2, 3], None), _x((2, 3)), 0, 0, _EXACT),
        Case("Identity", "identity_before_mul", _model(before_mul, [2, 3], None, {"k": k}), _x((2, 3)), 0, 0,
             _EXACT),
    ]


def dropout() -> list[Case]:
    nodes = [helper.make_node("Dropout", ["x"], ["d"], ratio=0.5), helper.make_node("Tanh", ["d"], ["y"])]
    return [Case("Dropout", "dropout_inference_removed", _model(nodes, [2, 3], None, opset=11), _x((2, 3)), 1e-5,
                 1e-6, _TRANSCENDENTAL)]


def constant() -> list[Case]:
    k = numpy_helper.from_array(_rng(11).standard_normal((1, 3)).astype(np.float32), "k")
    nodes = [helper.make_node("Constant", [], ["k"], value=k), helper.make_node("Mul", ["x", "k"], ["y"])]
    return [Case("Constant", "constant_folded_into_mul", _model(nodes, [2, 3], None), _x((2, 3)), 0, 0, _EXACT)]


def _int64(model: onnx.ModelProto, **values: list[int]) -> onnx.ModelProto:
    """Add int64 initializers (axes, pads, shapes) that ``_model`` would turn into floats."""
    for name, value in values.items():
        model.graph.initializer.append(numpy_helper.from_array(np.array(value, dtype=np.int64), name))
    return model


def _conv_then(op: onnx.NodeProto) -> list[onnx.NodeProto]:
    """A 1×1 Conv ("x" → "c", weight "w") before ``op`` so ``op`` sees an NHWC tensor inside TFLite."""
    return [helper.make_node("Conv", ["x", "w"], ["c"]), op]


def _w(out_channels: int, in_channels: int, seed: int = 20) -> np.ndarray:
    return _rng(seed).standard_normal((out_channels, in_channels, 1, 1))


def _bn_inits(channels: int, seed: int) -> dict[str, np.ndarray]:
    r = _rng(seed)
    return {"s": r.standard_normal(channels), "bb": r.standard_normal(channels),
            "m": r.standard_normal(channels), "v": r.uniform(0.5, 2.0, channels)}


def batch_normalization() -> list[Case]:
    bn = helper.make_node("BatchNormalization", ["c", "s", "bb", "m", "v"], ["y"], epsilon=1e-3)
    alone = helper.make_node("BatchNormalization", ["x", "s", "bb", "m", "v"], ["y"])
    r = _rng(21)
    dw = {"w": r.standard_normal((6, 1, 3, 3)), **_bn_inits(6, 22)}
    depthwise = [helper.make_node("Conv", ["x", "w"], ["c"], group=3, pads=[1, 1, 1, 1]), bn]
    why = "BN folded into the conv weights in float64 then rounded: a few ulp from onnxruntime's order"
    return [
        Case("BatchNormalization", "bn_folded_into_conv",
             _model(_conv_then(bn), [1, 2, 4, 4], None, {"w": _w(4, 2), **_bn_inits(4, 23)}), _x((1, 2, 4, 4)),
             1e-5, 1e-5, why, 1e-2, _FOLDED_FP16),
        Case("BatchNormalization", "bn_folded_into_depthwise", _model(depthwise, [1, 3, 5, 5], None, dw),
             _x((1, 3, 5, 5)), 1e-5, 1e-5, why, 1e-2, _FOLDED_FP16),
        Case("BatchNormalization", "bn_alone_mul_add", _model([alone], [2, 3, 4, 4], None, _bn_inits(3, 24)),
             _x((2, 3, 4, 4)), 1e-5, 1e-5, "scale and shift precomputed in float64, then one MUL and one ADD",
             1e-2, _FOLDED_FP16),
    ]


def clip() -> list[Case]:
    def one(name: str, low: float | None, high: float | None, after_conv: bool = False) -> Case:
        inits: dict[str, np.ndarray] = {}
        names = ["c" if after_conv else "x", "", ""]
        for i, (key, bound) in enumerate((("lo", low), ("hi", high)), start=1):
            if bound is not None:
                inits[key], names[i] = np.array(bound), key
        while names[-1] == "":
            names.pop()
        node = helper.make_node("Clip", names, ["y"])
        nodes = _conv_then(node) if after_conv else [node]
        if after_conv:
            inits["w"] = _w(3, 2)
        x = _x((1, 2, 4, 4)) if after_conv else {"x": 4 * _rng(25).standard_normal((2, 3, 4, 4)).astype(np.float32)}
        shape: list[int | str] = [1, 2, 4, 4] if after_conv else [2, 3, 4, 4]
        tol = 1e-5 if after_conv else 0.0
        return Case("Clip", name, _model(nodes, shape, None, inits), x, tol, tol,
                    _ACCUMULATE if after_conv else _EXACT)

    return [
        one("clip_relu6_fused_into_conv", 0.0, 6.0, after_conv=True),
        one("clip_relu_n1_to_1", -1.0, 1.0),
        one("clip_min_max", -0.5, 2.0),
        one("clip_max_only", None, 0.25),
    ]


def leaky_relu() -> list[Case]:
    node = helper.make_node("LeakyRelu", ["x"], ["y"], alpha=0.1)
    return [Case("LeakyRelu", "leaky_relu", _model([node], [2, 3, 4], None), _x((2, 3, 4)), 1e-6, 1e-7,
                 "one fp32 multiply; XNNPACK may compute it as a select of x and alpha·x")]


def hard_sigmoid() -> list[Case]:
    node = helper.make_node("HardSigmoid", ["x"], ["y"], alpha=0.3, beta=0.4)
    why = "alpha·x + beta as MUL then ADD (onnxruntime may fuse it into one multiply-add)"
    fp16_why = "alpha and beta are ONNX attributes (float32) but TFLite constants, which fp16 rounds"
    # torch's hardswish before opset 14 (and MobileNetV3's): x · HardSigmoid(x, 1/6, 1/2).
    swish = [helper.make_node("HardSigmoid", ["c"], ["h"], alpha=1 / 6, beta=0.5),
             helper.make_node("Mul", ["c", "h"], ["y"])]
    # MobileNetV3's squeeze-excite: x · HardSigmoid(FC(ReLU(FC(mean(x))))), the FCs as 1×1 convs.
    excite = [helper.make_node("Conv", ["x", "w"], ["c"]),
              helper.make_node("ReduceMean", ["c"], ["m"], axes=[2, 3], keepdims=1),
              helper.make_node("Conv", ["m", "w1", "b1"], ["f"]), helper.make_node("Relu", ["f"], ["r"]),
              helper.make_node("Conv", ["r", "w2", "b2"], ["g"]),
              helper.make_node("HardSigmoid", ["g"], ["h"], alpha=1 / 6, beta=0.5),
              helper.make_node("Mul", ["c", "h"], ["y"])]
    r = _rng(45)
    se_inits = {"w": _w(4, 2), "w1": _w(2, 4, 46), "b1": r.standard_normal(2), "w2": _w(4, 2, 47),
                "b2": r.standard_normal(4)}
    x = {"x": 3 * _rng(26).standard_normal((1, 2, 3, 3)).astype(np.float32)}
    return [
        Case("HardSigmoid", "hard_sigmoid", _model(_conv_then(node), [1, 2, 3, 3], None, {"w": _w(3, 2)}), x,
             1e-5, 1e-6, why, 1e-3, fp16_why),
        Case("HardSigmoid", "hard_swish_as_x_times_hard_sigmoid",
             _model([helper.make_node("Conv", ["x", "w"], ["c"]), *swish], [1, 2, 3, 3], None, {"w": _w(3, 2)}), x,
             1e-5, 1e-5, why, 1e-3, fp16_why),
        Case("HardSigmoid", "hard_sigmoid_squeeze_excite", _model(excite, [1, 2, 5, 5], None, se_inits),
             {"x": 2 * _rng(48).standard_normal((1, 2, 5, 5)).astype(np.float32)}, 1e-5, 1e-5, _ACCUMULATE,
             1e-3, fp16_why),
    ]


def hard_swish() -> list[Case]:
    node = helper.make_node("HardSwish", ["x"], ["y"])
    return [Case("HardSwish", "hard_swish", _model([node], [2, 3, 4, 4], None),
                 {"x": 4 * _rng(27).standard_normal((2, 3, 4, 4)).astype(np.float32)}, 1e-5, 1e-6,
                 "x·relu6(x + 3)/6 versus x·clip(x/6 + 1/2): different rounding of the same formula")]


def sub() -> list[Case]:
    k = _rng(28).standard_normal((3, 1, 1))
    minus = helper.make_node("Sub", ["k", "c"], ["y"])
    return [
        Case("Sub", "sub_constant_minus_nhwc", _model(_conv_then(minus), [1, 2, 3, 3], None, {"w": _w(3, 2), "k": k}),
             _x((1, 2, 3, 3)), 1e-5, 1e-5, _ACCUMULATE),
        Case("Sub", "sub_two_activations", _model([helper.make_node("Sub", ["x", "x"], ["y"])], [2, 3], None),
             _x((2, 3)), 0, 0, _EXACT),
    ]


def div() -> list[Case]:
    k = _rng(29).uniform(0.5, 2.0, (1, 4))
    # Paddle's hardswish x·relu6(x + 3)/6: HARD_SWISH in fp32; in int8 ADD, MUL and a MUL by 1/6.
    # (On the graph input: after a conv, a one-step tie in the conv's requantization, where kernels
    # may differ, becomes two steps once multiplied by relu6(x + 3).)
    paddle = [helper.make_node("Add", ["x", "three"], ["a"]), helper.make_node("Clip", ["a", "zero", "six"], ["r"]),
              helper.make_node("Mul", ["x", "r"], ["m"]), helper.make_node("Div", ["m", "six"], ["y"])]
    inits = {"three": np.array(3.0), "zero": np.array(0.0), "six": np.array(6.0)}
    return [
        Case("Div", "div_by_row", _model([helper.make_node("Div", ["x", "k"], ["y"])], [3, 4], None, {"k": k}),
             _x((3, 4)), 1e-6, 1e-7, "XNNPACK may divide as a multiply by the reciprocal"),
        Case("Div", "div_by_scalar_paddle_hard_swish", _model(paddle, [2, 3, 4, 4], None, inits),
             {"x": 3 * _rng(49).standard_normal((2, 3, 4, 4)).astype(np.float32)}, 1e-5, 1e-5,
             "x·relu6(x + 3)/6 as one HARD_SWISH, which rounds once where onnxruntime rounds three times"),
    ]


def depthwise_conv() -> list[Case]:
    r = _rng(30)
    multiplier = helper.make_node("Conv", ["x", "w", "b"], ["y"], group=3, pads=[1, 1, 1, 1], strides=[2, 2])
    plain = helper.make_node("Conv", ["x", "w"], ["y"], group=4, dilations=[2, 2])
    return [
        Case("Conv", "conv_depthwise_multiplier2_stride2",
             _model([multiplier], [1, 3, 7, 7], None, {"w": r.standard_normal((6, 1, 3, 3)),
                                                      "b": r.standard_normal(6)}),
             _x((1, 3, 7, 7)), 1e-5, 1e-5, _ACCUMULATE),
        Case("Conv", "conv_depthwise_dilated", _model([plain], [2, 4, 7, 7], None,
                                                       {"w": r.standard_normal((4, 1, 3, 3))}),
             _x((2, 4, 7, 7)), 1e-5, 1e-5, _ACCUMULATE),
    ]


def concat() -> list[Case]:
    k = _rng(31).standard_normal((1, 2, 3, 3))
    channels = helper.make_node("Concat", ["c", "k", "c"], ["y"], axis=1)
    width = helper.make_node("Concat", ["c", "c"], ["y"], axis=-1)
    plain = helper.make_node("Concat", ["x", "x"], ["y"], axis=0)
    inits = {"w": _w(3, 2), "k": k}
    return [
        Case("Concat", "concat_channels_of_nhwc_and_constant", _model(_conv_then(channels), [1, 2, 3, 3], None,
                                                                       inits), _x((1, 2, 3, 3)), 1e-5, 1e-5,
             _ACCUMULATE),
        Case("Concat", "concat_width_of_nhwc", _model(_conv_then(width), [1, 2, 3, 3], None, {"w": _w(3, 2)}),
             _x((1, 2, 3, 3)), 1e-5, 1e-5, _ACCUMULATE),
        Case("Concat", "concat_axis0_rank2", _model([plain], [2, 3], None), _x((2, 3)), 0, 0, _EXACT),
    ]


def transpose() -> list[Case]:
    after_conv = helper.make_node("Transpose", ["c"], ["y"], perm=[0, 2, 3, 1])
    plain = helper.make_node("Transpose", ["x"], ["y"])
    return [
        Case("Transpose", "transpose_of_nhwc_folds_layout", _model(_conv_then(after_conv), [1, 2, 3, 4], None,
                                                                    {"w": _w(3, 2)}), _x((1, 2, 3, 4)), 1e-5, 1e-5,
             _ACCUMULATE),
        Case("Transpose", "transpose_default_reverses", _model([plain], [2, 3, 4], None), _x((2, 3, 4)), 0, 0,
             _EXACT),
    ]


def squeeze() -> list[Case]:
    node = helper.make_node("Squeeze", ["c", "axes"], ["y"])
    model = _int64(_model(_conv_then(node), [2, 2, 1, 4], None, {"w": _w(3, 2)}), axes=[2])
    return [Case("Squeeze", "squeeze_h_of_nhwc", model, _x((2, 2, 1, 4)), 1e-5, 1e-5, _ACCUMULATE)]


def unsqueeze() -> list[Case]:
    node = helper.make_node("Unsqueeze", ["x", "axes"], ["y"])
    model = _int64(_model([node], ["N", 3, 4], None), axes=[1, -1])
    return [Case("Unsqueeze", "unsqueeze_dynamic_batch", model, _x((2, 3, 4)), 0, 0, _EXACT)]


def pad_op() -> list[Case]:
    nhwc = helper.make_node("Pad", ["c", "pads"], ["y"])
    valued = helper.make_node("Pad", ["x", "pads", "v"], ["y"])
    m1 = _int64(_model(_conv_then(nhwc), [1, 2, 3, 3], None, {"w": _w(3, 2)}), pads=[0, 1, 2, 0, 0, 0, 1, 3])
    m2 = _int64(_model([valued], [2, 3], None, {"v": np.array(1.5)}), pads=[1, 0, 0, 2])
    return [
        Case("Pad", "pad_nhwc_channels_and_spatial", m1, _x((1, 2, 3, 3)), 1e-5, 1e-5, _ACCUMULATE),
        Case("Pad", "pad_constant_value", m2, _x((2, 3)), 0, 0, _EXACT),
    ]


def resize() -> list[Case]:
    def one(name: str, size: list[int], tol: float, why: str, **attrs: str) -> Case:
        node = helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], **attrs)
        model = _int64(_model([node], [1, 2, 4, 5], None), sizes=[1, 2, *size])
        return Case("Resize", name, model, _x((1, 2, 4, 5)), tol, tol, why)

    lerp = "bilinear weights computed in another order (and by XNNPACK)"
    return [
        one("resize_nearest_half_pixel_x2", [8, 10], 0, _EXACT, mode="nearest"),
        one("resize_nearest_asymmetric_floor_x3", [12, 15], 0, _EXACT, mode="nearest",
            coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
        one("resize_linear_half_pixel", [7, 9], 1e-5, lerp, mode="linear"),
        one("resize_linear_align_corners", [7, 9], 1e-5, lerp, mode="linear",
            coordinate_transformation_mode="align_corners"),
        one("resize_linear_asymmetric_down", [3, 4], 1e-5, lerp, mode="linear",
            coordinate_transformation_mode="asymmetric"),
    ]


def reduce_mean() -> list[Case]:
    spatial = helper.make_node("ReduceMean", ["c"], ["y"], axes=[2, 3], keepdims=0)
    channels = helper.make_node("ReduceMean", ["c"], ["y"], axes=[1])
    height = helper.make_node("ReduceMean", ["c"], ["y"], axes=[-2], keepdims=0)
    inits = {"w": _w(3, 2)}
    why = "a mean of a few fp32 values (after a 1×1 conv) summed in another order"
    return [
        Case("ReduceMean", f"reduce_mean_{name}_of_nhwc", _model(_conv_then(node), [2, 2, 3, 4], None, inits),
             _x((2, 2, 3, 4)), 1e-5, 1e-5, why)
        for name, node in (("spatial_drop", spatial), ("channels_keep", channels), ("height_drop", height))
    ]


def split() -> list[Case]:
    channels = helper.make_node("Split", ["c", "parts"], ["y", "z"], axis=1)
    graph = _int64(_model(_conv_then(channels), [1, 2, 3, 3], None, {"w": _w(5, 2)}), parts=[2, 3])
    graph.graph.output.append(helper.make_tensor_value_info("z", F, None))
    plain = helper.make_node("Split", ["x"], ["y", "z"], axis=-1)
    equal = _model([plain], [2, 6], None)
    equal.graph.output.append(helper.make_tensor_value_info("z", F, None))
    return [
        Case("Split", "split_channels_of_nhwc", graph, _x((1, 2, 3, 3)), 1e-5, 1e-5, _ACCUMULATE),
        Case("Split", "split_equal_last_axis", equal, _x((2, 6)), 0, 0, _EXACT),
    ]


def slice_op() -> list[Case]:
    nhwc = helper.make_node("Slice", ["c", "starts", "ends", "axes", "steps"], ["y"])
    m1 = _int64(_model(_conv_then(nhwc), [1, 2, 6, 6], None, {"w": _w(4, 2)}),
                starts=[1, -1, 0], ends=[3, -100, 100], axes=[1, 3, 2], steps=[1, -2, 2])
    plain = helper.make_node("Slice", ["x", "starts", "ends"], ["y"])
    m2 = _int64(_model([plain], ["N", 5, 4], None), starts=[1, 1], ends=[4, 3])
    m2.graph.node[0].input.extend(["axes"])
    m2.graph.initializer.append(numpy_helper.from_array(np.array([2, 1], dtype=np.int64), "axes"))
    return [
        Case("Slice", "slice_nhwc_negative_step", m1, _x((1, 2, 6, 6)), 1e-5, 1e-5, _ACCUMULATE),
        Case("Slice", "slice_dynamic_batch_with_axes", m2, _x((3, 5, 4)), 0, 0, _EXACT),
    ]


def shape_chain() -> list[Case]:
    """What exporters write for ``x.view(x.size(0), -1, 2)``: Shape → Gather → Unsqueeze → Concat → Reshape."""
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "axes"], ["n1"]),
        helper.make_node("Concat", ["n1", "rest"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["r"]),
        helper.make_node("Relu", ["r"], ["y"]),
    ]
    model = _int64(_model(nodes, ["N", 3, 4], None), zero=[0], axes=[0], rest=[-1, 2])
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(np.array(0, dtype=np.int64), "zero"))
    softmax_dfl = helper.make_node("Softmax", ["x"], ["y"], axis=1)
    return [
        Case("Shape", "shape_chain_folded_with_batch_fixed", model, _x((1, 3, 4)), 0, 0, _EXACT),
        Case("Softmax", "softmax_13_middle_axis_transposed", _model([softmax_dfl], [1, 4, 16, 5], None),
             _x((1, 4, 16, 5)), 1e-5, 1e-7, _TRANSCENDENTAL),
    ]


def grouped_conv() -> list[Case]:
    r = _rng(40)
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], group=2, pads=[1, 1, 1, 1], strides=[2, 1])
    inits = {"w": r.standard_normal((6, 2, 3, 3)), "b": r.standard_normal(6)}
    return [Case("Conv", "conv_grouped_2_groups_not_depthwise", _model([node], [1, 4, 7, 7], None, inits),
                 _x((1, 4, 7, 7)), 1e-5, 1e-5, _ACCUMULATE)]


def conv_transpose() -> list[Case]:
    r = _rng(41)
    inits = {"w": r.standard_normal((3, 2, 3, 3)), "b": r.standard_normal(2)}
    plain = helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], strides=[2, 2])
    padded = helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], strides=[2, 2], pads=[1, 1, 1, 1],
                              output_padding=[1, 1])
    same = helper.make_node("ConvTranspose", ["x", "w"], ["y"], strides=[2, 2], auto_pad="SAME_UPPER")
    after_conv = [helper.make_node("Conv", ["x", "c_w"], ["c"]),
                  helper.make_node("ConvTranspose", ["c", "w", "b"], ["y"], kernel_shape=[3, 3])]
    return [
        Case("ConvTranspose", "conv_transpose_stride2_bias", _model([plain], [1, 3, 4, 5], None, inits),
             _x((1, 3, 4, 5)), 1e-5, 1e-5, _ACCUMULATE),
        Case("ConvTranspose", "conv_transpose_pads_output_padding", _model([padded], [1, 3, 4, 5], None, inits),
             _x((1, 3, 4, 5)), 1e-5, 1e-5, _ACCUMULATE),
        Case("ConvTranspose", "conv_transpose_same_upper", _model([same], [1, 3, 4, 5], None, {"w": inits["w"]}),
             _x((1, 3, 4, 5)), 1e-5, 1e-5, _ACCUMULATE),
        Case("ConvTranspose", "conv_transpose_after_conv",
             _model(after_conv, [1, 2, 4, 4], None, {**inits, "c_w": _w(3, 2)}), _x((1, 2, 4, 4)), 1e-5, 1e-5,
             _ACCUMULATE),
    ]


def pow_op() -> list[Case]:
    def one(name: str, exponent: float, tol: float, why: str) -> Case:
        node = helper.make_node("Pow", ["x", "e"], ["y"])
        x = {"x": _rng(42).uniform(0.1, 3.0, (2, 3, 4)).astype(np.float32)}
        return Case("Pow", name, _model([node], [2, 3, 4], None, {"e": np.array(exponent)}), x, tol, tol, why)

    return [
        one("pow_2_is_mul", 2.0, 0, _EXACT),
        one("pow_half_is_sqrt", 0.5, 2.5e-7, _SQRT),
        one("pow_3", 3.0, 1e-6, "TFLite's POW and std::pow round x³ differently by an ulp or two"),
    ]


def sqrt() -> list[Case]:
    node = helper.make_node("Sqrt", ["x"], ["y"])
    x = {"x": _rng(43).uniform(0.0, 5.0, (2, 3, 4, 4)).astype(np.float32)}
    return [Case("Sqrt", "sqrt", _model([node], [2, 3, 4, 4], None), x, 2.5e-7, 0, _SQRT)]


def batch_matmul() -> list[Case]:
    """Attention scores: q · kᵀ of two activations, with a broadcast batch."""
    nodes = [
        helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 1, 3, 2]),
        helper.make_node("MatMul", ["x", "xt"], ["y"]),
    ]
    const = helper.make_node("MatMul", ["x", "k"], ["y"])
    return [
        Case("MatMul", "matmul_two_activations", _model(nodes, [2, 3, 4, 5], None), _x((2, 3, 4, 5)), 1e-5, 1e-5,
             _ACCUMULATE),
        Case("MatMul", "matmul_constant_rank3_rhs",
             _model([const], [3, 4, 5], None, {"k": _rng(44).standard_normal((3, 5, 2))}), _x((3, 4, 5)), 1e-5,
             1e-5, _ACCUMULATE),
    ]


def gather() -> list[Case]:
    rows = helper.make_node("Gather", ["x", "idx"], ["y"], axis=1)
    after_conv = helper.make_node("Gather", ["c", "idx"], ["y"], axis=-1)
    m1 = _int64(_model([rows], ["N", 5, 3], None), idx=[[4, 0], [-1, 2]])
    m2 = _int64(_model(_conv_then(after_conv), [1, 2, 3, 5], None, {"w": _w(3, 2)}), idx=[1, 3])
    return [
        Case("Gather", "gather_2d_indices_negative", m1, _x((2, 5, 3)), 0, 0, _EXACT),
        Case("Gather", "gather_last_axis_of_nhwc", m2, _x((1, 2, 3, 5)), 1e-5, 1e-5, _ACCUMULATE),
    ]


CASE_BUILDERS: list[Callable[[], list[Case]]] = [
    conv, relu, max_pool, average_pool, global_average_pool, gemm, matmul, flatten, reshape, add, mul, softmax,
    sigmoid, tanh, identity, dropout, constant, batch_normalization, clip, leaky_relu, hard_sigmoid, hard_swish,
    sub, div, depthwise_conv, concat, transpose, squeeze, unsqueeze, pad_op, resize, reduce_mean, split, slice_op,
    shape_chain, grouped_conv, conv_transpose, pow_op, sqrt, batch_matmul,
    gather,
]


def all_cases() -> list[Case]:
    return [case for build in CASE_BUILDERS for case in build()]


# int8: each case's graph quantized by onnxruntime (tests/compiler/tflite/quantized.py), run in
# both runtimes; the error is measured in units of the output's scale (LSB). One LSB is where
# the two integer pipelines may round an accumulator or a requantization differently (TFLite's
# fixed-point multipliers vs onnxruntime's float rescale, exp/tanh lookup tables).
INT8_MAX_LSB = 1.0
INT8_LSB_WHY = "int8 requantization and LUT rounding differ by at most one step at ties"
# Cases with no int8 form, each with its reason. The op keeps int8 coverage through another case.
INT8_EXCLUDES: dict[str, str] = {
    "relu": "onnxruntime quantizes no lone Relu on a graph input (it only removes Relu after a quantized "
            "producer); relu_fused_into_conv covers Relu",
    "bn_folded_into_conv": "the lowering folds BN into the conv weights, which would change onnxruntime's int8 "
                           "weights; compile's prepare folds BN before quantizing, so int8 refuses (tested)",
    "bn_folded_into_depthwise": "as bn_folded_into_conv",
    "clip_relu_n1_to_1": "onnxruntime leaves a lone Clip on a graph input unquantized (no QDQ to lower); "
                         "clip_relu6_fused_into_conv covers Clip",
    "clip_min_max": "as clip_relu_n1_to_1",
    "clip_max_only": "as clip_relu_n1_to_1",
}
