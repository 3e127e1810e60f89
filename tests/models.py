"""Small ONNX models written with onnx.helper, for tests that need particular signatures."""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, helper


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
