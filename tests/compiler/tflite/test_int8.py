"""What the int8 and fp16 passes write: onnxruntime's integers and parameters, TFLite's layout rules."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import tflite
from onnx import helper, numpy_helper

from compiler.tflite import TfliteLoweringError, lower_to_tflite
from compiler.tflite.summary import summarize
from tests.compiler.tflite.cases import Case, _model, _w, all_cases
from tests.compiler.tflite.quantized import output_scales, qdq_model
from tests.compiler.tflite.runners import run_litert, run_onnxruntime


def _case(name: str) -> Case:
    return next(case for case in all_cases() if case.name == name)


def _tensors(data: bytes) -> dict[str, tuple[np.ndarray | None, tflite.Tensor]]:
    model = tflite.Model.GetRootAsModel(data, 0)
    graph = model.Subgraphs(0)
    out = {}
    dtypes = {tflite.TensorType.INT8: np.int8, tflite.TensorType.INT32: np.int32,
              tflite.TensorType.FLOAT32: np.float32, tflite.TensorType.FLOAT16: np.float16}
    for i in range(graph.TensorsLength()):
        t = graph.Tensors(i)
        buf = model.Buffers(t.Buffer())
        value = None
        if buf.DataLength():
            value = np.frombuffer(buf.DataAsNumpy().tobytes(), dtype=dtypes[t.Type()]).reshape(t.ShapeAsNumpy())
        out[t.Name().decode()] = (value, t)
    return out


def _opcodes(data: bytes) -> list[str]:
    return summarize(data).ops


def _initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def test_depthwise_weights_are_onnxruntimes_integers_per_channel_on_axis_3() -> None:
    qdq = qdq_model(_case("conv_depthwise_multiplier2_stride2"))
    inits = _initializers(qdq)
    tensors = _tensors(lower_to_tflite(qdq, precision="int8"))
    weight, t = next(v for k, v in tensors.items() if k.endswith("_1hwo"))
    assert weight is not None and weight.dtype == np.int8
    np.testing.assert_array_equal(weight, inits["w_quantized"].transpose(1, 2, 3, 0))  # [O,1,H,W] → [1,H,W,O]
    q = t.Quantization()
    assert q.QuantizedDimension() == 3
    np.testing.assert_array_equal(q.ScaleAsNumpy(), inits["w_scale"])
    assert not q.ZeroPointAsNumpy().any()
    bias, tb = tensors["y_bias"]
    x_scale = inits["x_scale"]
    np.testing.assert_allclose(tb.Quantization().ScaleAsNumpy(), x_scale * inits["w_scale"], rtol=1e-7)
    assert bias is not None and bias.dtype == np.int32
    np.testing.assert_array_equal(bias, inits["b_quantized"])  # onnxruntime's int32 bias, same scale


def test_conv_weights_are_per_channel_on_axis_0_and_fully_connected_accepts_per_channel() -> None:
    for name, suffix in (("conv_same_pads_bias", "_ohwi"), ("matmul_no_bias", "_fc")):
        qdq = qdq_model(_case(name))
        weight, t = next(v for k, v in _tensors(lower_to_tflite(qdq, precision="int8")).items() if k.endswith(suffix))
        assert weight is not None and weight.dtype == np.int8
        assert t.Quantization().QuantizedDimension() == 0
        assert t.Quantization().ScaleLength() == weight.shape[0] > 1


# The new ops' int8 forms: every operator int8 (only the edges' QUANTIZE/DEQUANTIZE are float),
# except BATCH_MATMUL with a constant right side, which onnxruntime quantizes per channel and
# TFLite's BATCH_MATMUL takes per tensor only: it stays a float island.
INT8_KERNELS = {
    "conv_grouped_2_groups_not_depthwise": "CONV_2D",
    "conv_transpose_pads_output_padding": "TRANSPOSE_CONV",
    "conv_transpose_after_conv": "TRANSPOSE_CONV",
    "matmul_two_activations": "BATCH_MATMUL",
    "gather_last_axis_of_nhwc": "GATHER",
    "softmax_13_middle_axis_transposed": "SOFTMAX",
    # Ops onnxruntime leaves in float between quantized values (derive.py gives the MUL/ADD a
    # lowering splits them into exact parameters): HardSigmoid, hardswish as x·HardSigmoid(x),
    # MobileNetV3's squeeze-excite (ReduceMean too), Paddle's x·relu6(x + 3)/6 (Div by 6 → MUL).
    "hard_sigmoid": "ADD",
    "hard_swish_as_x_times_hard_sigmoid": "MUL",
    "hard_sigmoid_squeeze_excite": "MEAN",
    "div_by_scalar_paddle_hard_swish": "MUL",
    # Weights through a folded Reshape / Transpose (qdq.carry_weights).
    "conv_weight_through_folded_reshape": "CONV_2D",
    "conv_weight_through_folded_transpose": "CONV_2D",
    "matmul_weight_through_folded_transpose": "FULLY_CONNECTED",
}


def _float_ops(data: bytes) -> list[str]:
    """Operators (other than QUANTIZE / DEQUANTIZE) that write a float32 tensor."""
    return summarize(data).float_ops


@pytest.mark.parametrize("name", sorted(INT8_KERNELS))
def test_new_ops_run_int8_kernels(name: str) -> None:
    data = lower_to_tflite(qdq_model(_case(name)), precision="int8")
    assert INT8_KERNELS[name] in _opcodes(data)
    assert _float_ops(data) == []


def test_transpose_conv_weights_are_per_channel_on_output_channels_with_int32_bias() -> None:
    # onnxruntime quantizes ConvTranspose's [C_in, C_out, kH, kW] weights along axis 1 (C_out);
    # TFLite's TRANSPOSE_CONV takes OHWI weights, so the scales move to axis 0.
    qdq = qdq_model(_case("conv_transpose_stride2_bias"))
    tensors = _tensors(lower_to_tflite(qdq, precision="int8"))
    weight, t = next(v for k, v in tensors.items() if k.endswith("_ohwi"))
    assert weight is not None and weight.dtype == np.int8 and weight.shape[0] == 2
    assert t.Quantization().QuantizedDimension() == 0 and t.Quantization().ScaleLength() == 2
    bias, tb = next(v for k, v in tensors.items() if k.endswith("_bias"))
    assert bias is not None and bias.dtype == np.int32 and tb.Quantization().ScaleLength() == 2


def test_batch_matmul_with_per_channel_constant_is_a_float_island() -> None:
    data = lower_to_tflite(qdq_model(_case("matmul_constant_rank3_rhs")), precision="int8")
    assert _float_ops(data) == ["BATCH_MATMUL"]


def test_float_io_adds_quantize_and_dequantize_int8_io_does_not() -> None:
    case = _case("conv_same_pads_bias")
    qdq = qdq_model(case)
    floats = lower_to_tflite(qdq, precision="int8")
    ops = _opcodes(floats)
    assert ops[0] == "QUANTIZE" and ops[-1] == "DEQUANTIZE"
    ints = lower_to_tflite(qdq, precision="int8", io="int8")
    assert "QUANTIZE" not in _opcodes(ints) and "DEQUANTIZE" not in _opcodes(ints)
    inits = _initializers(qdq)
    x_scale, x_zp = float(inits["x_scale"]), int(inits["x_zero_point"])
    x = case.inputs["x"]
    xq = np.clip(np.round(x / x_scale) + x_zp, -128, 127).astype(np.int8)
    (yq,) = run_litert(ints, {"x": xq})
    assert yq.dtype == np.int8
    (y,) = run_litert(floats, case.inputs)
    y_scale, y_zp = float(inits["y_scale"]), int(inits["y_zero_point"])
    np.testing.assert_allclose((yq.astype(np.float32) - y_zp) * y_scale, y, atol=y_scale * 1.001)


def test_tanh_output_is_requantized_from_the_spec_parameters() -> None:
    qdq = qdq_model(_case("tanh"))
    ops = _opcodes(lower_to_tflite(qdq, precision="int8"))
    assert ops == ["QUANTIZE", "TANH", "QUANTIZE", "DEQUANTIZE"]  # TANH writes (1/128, 0), then onnxruntime's


def test_silu_multiplies_the_logistic_output_without_requantizing_it() -> None:
    # MUL takes any input parameters, so it reads LOGISTIC's (1/256, -128) output directly: one
    # rounding instead of two, and one QUANTIZE less per SiLU (YOLOv8n has 58).
    nodes = [helper.make_node("Sigmoid", ["x"], ["s"]), helper.make_node("Mul", ["x", "s"], ["y"])]
    graph = helper.make_graph(nodes, "silu", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 16])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 16])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = {"x": np.random.default_rng(7).uniform(-6, 6, (2, 16)).astype(np.float32)}
    qdq = qdq_model(Case("Mul", "silu", model, x, 0, 0, ""))
    data = lower_to_tflite(qdq, precision="int8")
    assert _opcodes(data) == ["QUANTIZE", "LOGISTIC", "MUL", "DEQUANTIZE"]
    scale = output_scales(qdq)["y"]
    assert scale is not None
    assert float(np.abs(run_litert(data, x)[0] - run_onnxruntime(qdq, x)[0]).max()) <= scale * (1 + 1e-4)


def test_node_left_in_float_becomes_a_dequantize_float_quantize_island() -> None:
    """The fidelity fallback excludes nodes from quantization; they must run in float between int8 ops."""
    import tempfile
    from pathlib import Path

    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    from tests.compiler.tflite.quantized import _Reader, calibration_feeds

    r = np.random.default_rng(3)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], name="first", pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["a", "w2"], ["b"], name="kept_float", pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["b", "w3"], ["y"], name="last")]
    inits = {"w1": r.standard_normal((4, 2, 3, 3)), "w2": r.standard_normal((4, 4, 3, 3)),
             "w3": r.standard_normal((3, 4, 1, 1))}
    graph = helper.make_graph(nodes, "island", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 2, 5, 5])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    case = Case("Conv", "island", model, {"x": r.standard_normal((1, 2, 5, 5)).astype(np.float32)}, 0, 0, "")
    with tempfile.TemporaryDirectory() as tmp:
        onnx.save(model, f"{tmp}/m.onnx")
        quantize_static(f"{tmp}/m.onnx", f"{tmp}/q.onnx", _Reader(calibration_feeds(case)),
                        quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QInt8,
                        weight_type=QuantType.QInt8, nodes_to_exclude=["kept_float"])
        qdq = onnx.load(str(Path(tmp) / "q.onnx"))
    data = lower_to_tflite(qdq, precision="int8")
    ops = _opcodes(data)
    assert ops.count("CONV_2D") == 3 and ops.count("DEQUANTIZE") == 2 and ops.count("QUANTIZE") == 2
    tensors = _tensors(data)
    assert tensors["w2_ohwi"][1].Type() == tflite.TensorType.FLOAT32  # the excluded conv keeps float weights
    (want,), (got,) = run_onnxruntime(qdq, case.inputs), run_litert(data, case.inputs)
    assert np.abs(got - want).max() <= output_scales(qdq)["y"] * 1.0001  # type: ignore[operator]


def test_batchnorm_fold_into_quantized_conv_is_refused() -> None:
    qdq = qdq_model(_case("bn_folded_into_conv"))
    with pytest.raises(TfliteLoweringError, match="changed the quantized weights"):
        lower_to_tflite(qdq, precision="int8")


def test_precision_and_graph_must_match() -> None:
    case = _case("conv_same_pads_bias")
    with pytest.raises(TfliteLoweringError, match="calibrated QDQ graph"):
        lower_to_tflite(case.model, precision="int8")
    with pytest.raises(TfliteLoweringError, match="float graph"):
        lower_to_tflite(qdq_model(case), precision="fp16")
    with pytest.raises(TfliteLoweringError, match="io"):
        lower_to_tflite(case.model, io="uint8")


def test_fp16_stores_float16_weights_behind_dequantize() -> None:
    case = _case("conv_same_pads_bias")
    data = lower_to_tflite(case.model, precision="fp16")
    ops = _opcodes(data)
    assert ops[:2] == ["DEQUANTIZE", "DEQUANTIZE"] and ops[2:] == _opcodes(lower_to_tflite(case.model))
    halves = [v for v, t in _tensors(data).values() if t.Type() == tflite.TensorType.FLOAT16]
    assert len(halves) == 2 and all(v is not None for v in halves)


def test_per_channel_weights_follow_a_folded_transpose_with_their_axis() -> None:
    # A hand-written QDQ graph: per-channel int8 weights stored [C_in, C_out, kH, kW] (scales on axis 1),
    # transposed to the conv's [C_out, C_in, kH, kW]: the scales must end on TFLite's output channel.
    r = np.random.default_rng(11)
    w_int8 = r.integers(-127, 128, (2, 3, 3, 3)).astype(np.int8)
    w_scale = np.array([0.01, 0.02, 0.03], np.float32)
    f = onnx.TensorProto.FLOAT
    inits = [numpy_helper.from_array(a, n) for n, a in (
        ("w_q", w_int8), ("w_s", w_scale), ("w_zp", np.zeros(3, np.int8)), ("x_s", np.float32(0.02)),
        ("x_zp", np.int8(0)), ("y_s", np.float32(0.05)), ("y_zp", np.int8(3)))]
    nodes = [
        helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_zp"], ["w_t"], axis=1),
        helper.make_node("Transpose", ["w_t"], ["w"], perm=[1, 0, 2, 3]),
        helper.make_node("QuantizeLinear", ["x", "x_s", "x_zp"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "x_s", "x_zp"], ["xd"]),
        helper.make_node("Conv", ["xd", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("QuantizeLinear", ["c", "y_s", "y_zp"], ["cq"]),
        helper.make_node("DequantizeLinear", ["cq", "y_s", "y_zp"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "carry", [helper.make_tensor_value_info("x", f, [1, 2, 5, 5])],
                              [helper.make_tensor_value_info("y", f, None)], inits)
    qdq = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    data = lower_to_tflite(qdq, precision="int8")
    assert _float_ops(data) == []
    weight, t = next(v for k, v in _tensors(data).items() if k.endswith("_ohwi"))
    np.testing.assert_array_equal(weight, w_int8.transpose(1, 0, 2, 3).transpose(0, 2, 3, 1))
    assert t.Quantization().QuantizedDimension() == 0
    np.testing.assert_array_equal(t.Quantization().ScaleAsNumpy(), w_scale)
    x = {"x": r.uniform(-2, 2, (1, 2, 5, 5)).astype(np.float32)}
    assert np.abs(run_litert(data, x)[0] - run_onnxruntime(qdq, x)[0]).max() <= 0.05 * (1 + 1e-4)


def test_hard_swish_without_an_output_quantize_takes_its_range_from_the_input() -> None:
    # onnxruntime quantizes no HardSwish: as a graph output its value has no QuantizeLinear. The
    # int8 HARD_SWISH gets parameters from the input's int8 range (derive.py) instead of an island.
    import tempfile

    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    from tests.compiler.tflite.quantized import _Reader, calibration_feeds

    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("HardSwish", ["c"], ["y"])]
    case = Case("HardSwish", "hard_swish_output", _model(nodes, [1, 2, 4, 4], None, {"w": _w(3, 2)}),
                {"x": 2 * np.random.default_rng(4).standard_normal((1, 2, 4, 4)).astype(np.float32)}, 0, 0, "")
    with tempfile.TemporaryDirectory() as tmp:
        onnx.save(case.model, f"{tmp}/m.onnx")
        quantize_static(f"{tmp}/m.onnx", f"{tmp}/q.onnx", _Reader(calibration_feeds(case)),
                        quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QInt8,
                        weight_type=QuantType.QInt8, op_types_to_quantize=["Conv"])
        qdq = onnx.load(f"{tmp}/q.onnx")
    assert output_scales(qdq)["y"] is None
    data = lower_to_tflite(qdq, precision="int8")
    assert _float_ops(data) == [] and "HARD_SWISH" in _opcodes(data)
    scale = _tensors(data)["y_int8"][1].Quantization().Scale(0)  # the int8 output before its DEQUANTIZE
    got, want = run_litert(data, case.inputs)[0], run_onnxruntime(qdq, case.inputs)[0]
    assert np.abs(got - want).max() <= scale * 0.5 * (1 + 1e-3)  # one rounding of the exact hardswish
