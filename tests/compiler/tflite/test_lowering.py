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
    w = np.ones((4, 2, 3, 3, 3))
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="conv3d")
    with pytest.raises(TfliteLoweringError, match=r"'Conv' \(node 'conv3d'\): only 2-D convolutions"):
        lower_to_tflite(_model([node], [1, 2, 5, 5, 5], None, {"w": w}))


def test_batch_norm_after_conv_is_folded_into_its_weights() -> None:
    assert opcodes(lower_to_tflite(case("bn_folded_into_conv"))) == [OP.TRANSPOSE, OP.CONV_2D, OP.TRANSPOSE]
    ops = opcodes(lower_to_tflite(case("bn_folded_into_depthwise")))
    assert ops == [OP.TRANSPOSE, OP.DEPTHWISE_CONV_2D, OP.TRANSPOSE]


def test_clip_0_6_after_conv_is_a_fused_relu6() -> None:
    assert opcodes(lower_to_tflite(case("clip_relu6_fused_into_conv"))) == [OP.TRANSPOSE, OP.CONV_2D, OP.TRANSPOSE]
    assert opcodes(lower_to_tflite(case("clip_relu_n1_to_1"))) == [OP.RELU_N1_TO_1]
    assert opcodes(lower_to_tflite(case("clip_min_max"))) == [OP.MAXIMUM, OP.MINIMUM]


def test_transpose_of_nhwc_is_one_transpose() -> None:
    # perm (0, 2, 3, 1) of an NHWC tensor is the identity: what is left is a RESHAPE writing the output.
    ops = opcodes(lower_to_tflite(case("transpose_of_nhwc_folds_layout")))
    assert ops == [OP.TRANSPOSE, OP.CONV_2D, OP.RESHAPE]


def test_concat_of_nhwc_stays_channels_last() -> None:
    ops = opcodes(lower_to_tflite(case("concat_channels_of_nhwc_and_constant")))
    assert ops == [OP.TRANSPOSE, OP.CONV_2D, OP.CONCATENATION, OP.TRANSPOSE]


def test_legacy_softmax_over_a_middle_axis_is_rejected() -> None:
    # Before opset 13, axis=1 of a rank-3 tensor means "flatten from axis 1", not a per-axis softmax.
    node = helper.make_node("Softmax", ["x"], ["y"], axis=1, name="sm")
    with pytest.raises(TfliteLoweringError, match="only the last axis"):
        lower_to_tflite(_model([node], [2, 3, 4], None, opset=11))


def test_empty_slice_is_rejected() -> None:
    node = helper.make_node("Slice", ["x", "starts", "ends"], ["y"], name="empty")
    model = _model([node], [2, 3], None)
    for name in ("starts", "ends"):
        model.graph.initializer.append(onnx.numpy_helper.from_array(np.array([1], dtype=np.int64), name))
    with pytest.raises(TfliteLoweringError, match=r"'Slice' \(node 'empty'\): the slice is empty"):
        lower_to_tflite(model)


def test_resize_with_a_rounding_tflite_lacks_is_rejected() -> None:
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="nearest", name="rs",
                            coordinate_transformation_mode="asymmetric")
    model = _model([node], [1, 1, 4, 4], None, {"scales": np.array([1, 1, 2, 2])})
    with pytest.raises(TfliteLoweringError, match=r"'Resize' \(node 'rs'\): nearest_mode='round_prefer_floor'"):
        lower_to_tflite(model)


def test_input_through_identity_to_output_gets_its_own_tensor() -> None:
    # input → Identity → output: one tensor as both the model's input and output leaves the int8
    # pass no place for its edge QUANTIZE / DEQUANTIZE; a RESHAPE to the same shape copies it.
    from tests.compiler.tflite.runners import run_litert

    model = _model([helper.make_node("Identity", ["x"], ["y"])], ["N", 3], None)
    data = lower_to_tflite(model)
    assert opcodes(data) == [OP.RESHAPE]
    graph = tflite.Model.GetRootAsModel(data, 0).Subgraphs(0)
    assert graph.Inputs(0) != graph.Outputs(0)
    assert graph.Tensors(graph.Outputs(0)).Name() == b"y"
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    np.testing.assert_array_equal(run_litert(data, {"x": x})[0], x)
