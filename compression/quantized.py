"""Recognise an ONNX model that is already quantized, so that it is labelled as such and not quantized again."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import onnx

__all__ = ["QUANTIZED_OPS", "quantization_of"]

QUANTIZED_OPS = frozenset(
    {
        "QuantizeLinear",
        "DequantizeLinear",
        "DynamicQuantizeLinear",
        "MatMulInteger",
        "ConvInteger",
        "MatMulNBits",
        "DynamicQuantizeMatMul",
    }
)
INTEGER_WEIGHTS = {
    onnx.TensorProto.INT8: "int8",
    onnx.TensorProto.UINT8: "uint8",
    onnx.TensorProto.INT4: "int4",
    onnx.TensorProto.UINT4: "uint4",
}


def quantization_of(path: Path) -> str | None:
    """What makes the model at ``path`` quantized ("24 DequantizeLinear, 8 int8 initializers"), or None."""
    model = onnx.load(str(path), load_external_data=False)
    graphs = [model.graph]
    ops: Counter[str] = Counter()
    weights: Counter[str] = Counter()
    while graphs:
        graph = graphs.pop()
        for node in graph.node:
            if node.op_type in QUANTIZED_OPS or node.op_type.startswith("QLinear"):
                ops[node.op_type] += 1
            graphs += [a.g for a in node.attribute if a.type == onnx.AttributeProto.GRAPH]
            graphs += [g for a in node.attribute if a.type == onnx.AttributeProto.GRAPHS for g in a.graphs]
        for tensor in graph.initializer:
            kind = INTEGER_WEIGHTS.get(tensor.data_type)
            if kind is not None and len(tensor.dims) > 0:
                weights[kind] += 1
    if not ops and not weights:
        return None
    parts = [f"{n} {op}" for op, n in sorted(ops.items())] + [f"{n} {k} initializers" for k, n in weights.items()]
    return ", ".join(parts)
