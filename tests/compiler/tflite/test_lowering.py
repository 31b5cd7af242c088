"""The lowering's structure: fusion, layout transposes, determinism and its errors."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import tflite
from onnx import helper

from compiler.tflite import SUPPORTED_OPS, TfliteLoweringError, lower_to_tflite
from edgectl.errors import UserError
from tests.compiler.tflite.cases import _model, all_cases

OP = tflite.BuiltinOperator


def opcodes(data: bytes) -> list[int]:
    model = tflite.Model.GetRootAsModel(data, 0)
    graph = model.Subgraphs(0)
    return [model.OperatorCodes(graph.Operators(i).OpcodeIndex()).BuiltinCode() for i in range(graph.OperatorsLength())]


def case(name: str) -> onnx.ModelProto:
    return next(c.model for c in all_cases() if c.name == name)


def test_relu_after_conv_is_fused() -> None:
    assert opcodes(lower_to_tflite(case("relu_fused_into_conv"))) == [OP.TRANSPOSE, OP.CONV_2D, OP.TRANSPOSE]


def test_matmul_add_becomes_one_fully_connected() -> None:
    assert opcodes(lower_to_tflite(case("matmul_add_bias_folded"))) == [OP.FULLY_CONNECTED]


def test_flatten_of_nhwc_transposes_back_first() -> None:
    ops = opcodes(lower_to_tflite(case("flatten_after_conv_keeps_nchw_order")))
    assert ops == [OP.TRANSPOSE, OP.CONV_2D, OP.TRANSPOSE, OP.RESHAPE]


def test_flatten_after_global_pool_needs_no_transpose() -> None:
    w = np.ones((3, 2, 1, 1))
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"]),
        helper.make_node("GlobalAveragePool", ["c"], ["g"]),
        helper.make_node("Flatten", ["g"], ["y"]),
    ]
    ops = opcodes(lower_to_tflite(_model(nodes, [1, 2, 4, 4], None, {"w": w})))
    assert ops == [OP.TRANSPOSE, OP.CONV_2D, OP.MEAN, OP.RESHAPE]


def test_lowering_twice_gives_identical_bytes() -> None:
    model = case("conv_same_pads_bias")
    assert lower_to_tflite(model) == lower_to_tflite(model)


def test_unsupported_op_names_op_node_and_supported_list() -> None:
    node = helper.make_node("Erf", ["x"], ["y"], name="erf_1")
    with pytest.raises(TfliteLoweringError) as info:
        lower_to_tflite(_model([node], [2, 3], None))
    message = str(info.value)
    assert message.startswith("cannot lower ONNX op 'Erf' (node 'erf_1'): supported ops are ")
    assert ", ".join(SUPPORTED_OPS) in message
    assert isinstance(info.value, UserError)


def test_op_below_its_first_lowering_opset_is_rejected() -> None:
    node = helper.make_node("Add", ["x", "x"], ["y"], name="old_add")
    with pytest.raises(TfliteLoweringError, match=r"'Add' \(node 'old_add'\) at opset 6 \(lowerings exist from opset 7\)"):
        lower_to_tflite(_model([node], [2, 3], None, opset=6))


def test_unsupported_attribute_names_the_node() -> None:
    w = np.ones((4, 1, 3, 3))
    node = helper.make_node("Conv", ["x", "w"], ["y"], group=2, name="dw")
    with pytest.raises(TfliteLoweringError, match=r"'Conv' \(node 'dw'\): grouped convolution \(group=2\)"):
        lower_to_tflite(_model([node], [1, 2, 5, 5], None, {"w": w}))


def test_softmax_over_a_middle_axis_is_rejected() -> None:
    node = helper.make_node("Softmax", ["x"], ["y"], axis=1, name="sm")
    with pytest.raises(TfliteLoweringError, match="only the last axis"):
        lower_to_tflite(_model([node], [2, 3, 4], None))
