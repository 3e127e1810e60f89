"""Small ONNX models written with onnx.helper, for tests that need particular signatures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def two_input_model(path: Path) -> Path:
    """sum = a + float(b); twice = 2 * a. Inputs: a float32[N,3], b int64[N,3]."""
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["b"], ["b_float"], to=TensorProto.FLOAT),
            helper.make_node("Add", ["a", "b_float"], ["sum"]),
            helper.make_node("Add", ["a", "a"], ["twice"]),
        ],
        "two_inputs",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 3]),
            helper.make_tensor_value_info("b", TensorProto.INT64, ["N", 3]),
        ],
        [
            helper.make_tensor_value_info("sum", TensorProto.FLOAT, ["N", 3]),
            helper.make_tensor_value_info("twice", TensorProto.FLOAT, ["N", 3]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def affine_model(path: Path, w: np.ndarray, b: np.ndarray) -> Path:
    """y = x @ w + b; label = argmax(y, axis 1). Input x float32[N,K]; outputs y float32[N,M], label int64[N]."""
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["y"]),
            helper.make_node("ArgMax", ["y"], ["label"], axis=1, keepdims=0),
        ],
        "affine",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", w.shape[0]])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", w.shape[1]]),
            helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]),
        ],
        initializer=[numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def digits_student() -> object:
    """A distillation student for the digits models: a 64-16-10 MLP (imported as tests.models:digits_student)."""
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10))
