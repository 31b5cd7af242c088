"""Run one model in onnxruntime and its lowering in LiteRT on the same inputs."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from ai_edge_litert.interpreter import Interpreter, OpResolverType


def run_onnxruntime(model: onnx.ModelProto, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return [np.asarray(out) for out in session.run(None, inputs)]


def run_litert(data: bytes, inputs: dict[str, np.ndarray], resolver: str = "AUTO") -> list[np.ndarray]:
    """``resolver``: LiteRT's OpResolverType name (AUTO: XNNPACK; BUILTIN_WITHOUT_DEFAULT_DELEGATES:
    the builtin optimized kernels; BUILTIN_REF: the reference kernels)."""
    interpreter = Interpreter(model_content=data, experimental_op_resolver_type=getattr(OpResolverType, resolver))
    details = interpreter.get_input_details()
    for detail in details:
        if tuple(detail["shape"]) != inputs[detail["name"]].shape:
            interpreter.resize_tensor_input(detail["index"], list(inputs[detail["name"]].shape))
    interpreter.allocate_tensors()
    for detail in details:
        interpreter.set_tensor(detail["index"], inputs[detail["name"]])
    interpreter.invoke()
    return [interpreter.get_tensor(d["index"]).copy() for d in interpreter.get_output_details()]
