"""The TRANSPOSE peephole rules: cancel, merge, become a RESHAPE, sink below unary ops."""

from __future__ import annotations

import numpy as np
import onnx
import tflite
from onnx import helper

from compiler.tflite import lower_to_tflite
from tests.compiler.tflite.cases import Case, _model
from tests.compiler.tflite.quantized import output_scales, qdq_model
from tests.compiler.tflite.runners import run_litert, run_onnxruntime
from tests.compiler.tflite.test_int8 import _float_ops
from tests.compiler.tflite.test_lowering import opcodes

OP = tflite.BuiltinOperator


def _check(nodes: list, shape: list[int], inits: dict[str, np.ndarray] | None = None) -> list[int]:
    model = _model(nodes, shape, None, inits)
    x = {"x": np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
    data = lower_to_tflite(model)
    np.testing.assert_allclose(run_litert(data, x)[0], run_onnxruntime(model, x)[0], rtol=1e-5, atol=1e-5)
    return opcodes(data)


def test_transposes_that_cancel_are_removed() -> None:
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 3, 1]),
             helper.make_node("Transpose", ["t"], ["u"], perm=[0, 3, 1, 2]),
             helper.make_node("Relu", ["u"], ["y"])]
    assert _check(nodes, [1, 2, 3, 4]) == [OP.RELU]


def test_two_transposes_merge_into_one() -> None:
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 1, 3]),
             helper.make_node("Transpose", ["t"], ["y"], perm=[0, 1, 3, 2])]
    assert _check(nodes, [1, 2, 3, 4]) == [OP.TRANSPOSE]


def test_transpose_around_sigmoid_cancels() -> None:
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 1]),
             helper.make_node("Sigmoid", ["t"], ["s"]),
             helper.make_node("Transpose", ["s"], ["u"], perm=[0, 2, 1]),
             helper.make_node("Relu", ["u"], ["y"])]
    assert _check(nodes, [2, 3, 4]) == [OP.LOGISTIC, OP.RELU]


def test_transpose_of_single_channel_input_is_a_reshape() -> None:
    w = np.random.default_rng(1).standard_normal((2, 1, 3, 3))
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("GlobalAveragePool", ["c"], ["y"])]
    assert _check(nodes, [1, 1, 5, 5], {"w": w}) == [OP.RESHAPE, OP.CONV_2D, OP.MEAN, OP.RESHAPE]


def test_reshape_from_a_transpose_keeps_the_dynamic_batch() -> None:
    model = _model([helper.make_node("Transpose", ["x"], ["y"], perm=[0, 2, 1])], ["N", 1, 4], None)
    data = lower_to_tflite(model)
    assert opcodes(data) == [OP.RESHAPE]
    x = {"x": np.random.default_rng(2).standard_normal((3, 1, 4)).astype(np.float32)}
    np.testing.assert_array_equal(run_litert(data, x)[0], run_onnxruntime(model, x)[0])


def _detection_head() -> onnx.ModelProto:
    """YOLO's head: each scale's NHWC map is flattened to [N, C, H·W] and the scales concatenated."""
    r = np.random.default_rng(3)
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"]),
        helper.make_node("Conv", ["x", "w2"], ["c2"], strides=[2, 2]),
        helper.make_node("Reshape", ["c1", "s1"], ["f1"]),
        helper.make_node("Reshape", ["c2", "s2"], ["f2"]),
        helper.make_node("Concat", ["f1", "f2"], ["y"], axis=2),
    ]
    model = _model(nodes, [1, 2, 4, 4], None, {"w1": r.standard_normal((3, 2, 1, 1)),
                                                "w2": r.standard_normal((3, 2, 1, 1))})
    model.graph.initializer.extend([onnx.numpy_helper.from_array(np.array(v, dtype=np.int64), n)
                                    for n, v in (("s1", [1, 3, 16]), ("s2", [1, 3, 4]))])
    return model


def test_detection_head_concat_needs_one_transpose_back() -> None:
    model = _detection_head()
    x = {"x": np.random.default_rng(4).standard_normal((1, 2, 4, 4)).astype(np.float32)}
    data = lower_to_tflite(model)
    np.testing.assert_allclose(run_litert(data, x)[0], run_onnxruntime(model, x)[0], rtol=1e-5, atol=1e-5)
    assert opcodes(data).count(OP.TRANSPOSE) == 2  # the input's, and one after the concatenation


def test_paddle_hardswish_becomes_one_hard_swish() -> None:
    nodes = [helper.make_node("Add", ["x", "three"], ["a"]),
             helper.make_node("Clip", ["a", "zero", "six"], ["c"]),
             helper.make_node("Mul", ["x", "c"], ["m"]),
             helper.make_node("Div", ["m", "six"], ["y"])]
    inits = {"three": np.array(3.0), "zero": np.array(0.0), "six": np.array(6.0)}
    model = _model(nodes, [2, 3, 4, 4], None, inits)
    x = {"x": 4 * np.random.default_rng(4).standard_normal((2, 3, 4, 4)).astype(np.float32)}
    data = lower_to_tflite(model)
    assert opcodes(data) == [OP.HARD_SWISH]
    # Same formula, evaluated in another order: within a couple of ulp.
    np.testing.assert_allclose(run_litert(data, x)[0], run_onnxruntime(model, x)[0], rtol=1e-6, atol=1e-6)


# ---- int8: the rules run before the int8 pass and keep what it needs ----------------------------


def _int8_check(model: onnx.ModelProto, shape: list[int]) -> list[str]:
    """Lower the model's QDQ graph to int8; the output must be within one step of onnxruntime and
    the float operators are returned (none when the moved tensors kept their ONNX value, so the int8
    pass found their parameters)."""
    x = {"x": np.random.default_rng(5).standard_normal(shape).astype(np.float32)}
    qdq = qdq_model(Case(model.graph.node[-1].op_type, "optimize_int8", model, x, 0, 0, ""))
    data = lower_to_tflite(qdq, precision="int8")
    for got, want, scale in zip(run_litert(data, x), run_onnxruntime(qdq, x), output_scales(qdq).values(), strict=True):
        assert scale is not None and float(np.abs(got - want).max()) <= scale * (1 + 1e-4)
    return _float_ops(data)


def test_int8_sigmoid_between_transposes_keeps_its_parameters() -> None:
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 1]),
             helper.make_node("Sigmoid", ["t"], ["s"]),
             helper.make_node("Transpose", ["s"], ["u"], perm=[0, 2, 1]),
             helper.make_node("Relu", ["u"], ["y"])]
    assert _int8_check(_model(nodes, [2, 3, 4], None), [2, 3, 4]) == []


def test_int8_concat_below_moved_transposes_keeps_its_parameters() -> None:
    model = _detection_head()
    data = lower_to_tflite(model)
    assert opcodes(data).count(OP.TRANSPOSE) == 2  # the concat rule fired in fp32 ...
    assert _int8_check(model, [1, 2, 4, 4]) == []  # ... and in int8 the concat stayed int8
