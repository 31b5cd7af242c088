"""Constant folding before lowering: shape subgraphs become initializers, nothing else changes."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from compiler.tflite.fold import Folded, fold_constants
from tests.compiler.tflite.cases import all_cases
from tests.compiler.tflite.runners import run_onnxruntime


def test_shape_chain_becomes_a_constant_reshape_target() -> None:
    model = next(c.model for c in all_cases() if c.name == "shape_chain_folded_with_batch_fixed")
    folded = fold_constants(model)
    assert [n.op_type for n in folded.graph.node] == ["Reshape", "Relu"]
    target = next(t for t in folded.graph.initializer if t.name == "target")
    # The batch was dynamic, so it was fixed to 1 to fold Shape[0].
    assert numpy_helper.to_array(target).tolist() == [1, -1, 2]
    x = np.random.default_rng(0).standard_normal((1, 3, 4)).astype(np.float32)
    np.testing.assert_array_equal(run_onnxruntime(folded, {"x": x})[0], run_onnxruntime(model, {"x": x})[0])
    assert len(model.graph.node) == 6  # the input model is left alone


def test_static_dims_fold_without_fixing_the_batch() -> None:
    nodes = [
        helper.make_node("Shape", ["x"], ["s"], start=1),
        helper.make_node("ReduceProd", ["s"], ["p"], keepdims=1),
        helper.make_node("Concat", ["minus_one", "p"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.array([-1], dtype=np.int64), "minus_one")],
    )
    folded = fold_constants(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert [n.op_type for n in folded.graph.node] == ["Reshape"]
    assert folded.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"


def test_dequantize_of_a_constant_is_kept_for_the_int8_lowering() -> None:
    nodes = [
        helper.make_node("DequantizeLinear", ["wq", "scale", "zp"], ["w"]),
        helper.make_node("MatMul", ["x", "w"], ["y"]),
    ]
    inits = [
        numpy_helper.from_array(np.ones((3, 2), dtype=np.int8), "wq"),
        numpy_helper.from_array(np.array(0.5, dtype=np.float32), "scale"),
        numpy_helper.from_array(np.array(0, dtype=np.int8), "zp"),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])], inits,
    )
    folded = fold_constants(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert [n.op_type for n in folded.graph.node] == ["DequantizeLinear", "MatMul"]


def test_record_lists_what_was_folded_with_its_values() -> None:
    # The int8 pass follows quantized weights through these (qdq.carry_weights).
    model = next(c.model for c in all_cases() if c.name == "conv_weight_through_folded_transpose")
    record: list[Folded] = []
    fold_constants(model, record)
    assert [step.node.op_type for step in record] == ["Transpose"]
    (step,) = record
    np.testing.assert_array_equal(step.outputs["wr"], step.inputs["wt"].transpose(1, 0, 2, 3))
