"""Strip what ONNX Runtime does not need from a quantized ONNX file, keeping every computed value.

Besides the INT8 weights, ONNX Runtime's quantizer writes node names and long derived tensor names
(``/features/features.1/Relu_output_0_QuantizeLinear_Output``) for about three times as many nodes
as the export had, opset imports for domains no node uses, an all-zero INT32 zero point beside every
quantized bias, shapes of tensors that pre-processing fused away, and sometimes one INT8 tensor
twice. On a small model that is a tenth of the file: a 29k-parameter CNN's static INT8 file was
0.32x its FP32 export with 0.25x of INT8 weights. None of it changes what the graph computes nor
which fused kernels ONNX Runtime picks at load time (``tests/test_compress_tidy.py`` checks the
outputs are bit-identical). The other inferred shapes (``value_info``) stay: without them ONNX
Runtime no longer fuses a transformer's Add + LayerNorm into SkipLayerNormalization, and the
outputs change. Graph input and output names, the runtime's contract, are never renamed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx import numpy_helper

__all__ = ["TidyResult", "tidy_file", "tidy_model"]

log = logging.getLogger(__name__)


@dataclass
class TidyResult:
    """What ``tidy_model`` removed, for the log and the tests."""

    bytes_before: int
    bytes_after: int
    unused_initializers: int = 0
    duplicate_initializers: int = 0
    zero_bias_zero_points: int = 0
    unused_opsets: int = 0
    stale_shapes: int = 0
    renamed_tensors: int = 0


def _has_subgraphs(graph: onnx.GraphProto) -> bool:
    return any(
        a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in graph.node for a in n.attribute
    )


def _consumed(graph: onnx.GraphProto) -> set[str]:
    """Names read by a node or the caller; an initializer that is also a graph input (old IR) counts."""
    io = {v.name for v in graph.input} | {v.name for v in graph.output}
    return {name for node in graph.node for name in node.input} | io


def _drop_unused_initializers(graph: onnx.GraphProto) -> int:
    used = _consumed(graph)
    keep = [t for t in graph.initializer if t.name in used]
    dropped = len(graph.initializer) - len(keep)
    if dropped:
        del graph.initializer[:]
        graph.initializer.extend(keep)
    return dropped


def _merge_duplicate_initializers(graph: onnx.GraphProto) -> int:
    """Point every consumer of a byte-identical initializer (same type, shape, data) at the first one."""
    first: dict[tuple[int, tuple[int, ...], bytes], str] = {}
    alias: dict[str, str] = {}
    io = {v.name for v in graph.input} | {v.name for v in graph.output}
    for tensor in graph.initializer:
        if tensor.name in io:
            continue
        key = (tensor.data_type, tuple(tensor.dims), numpy_helper.to_array(tensor).tobytes())
        if key in first:
            alias[tensor.name] = first[key]
        else:
            first[key] = tensor.name
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in alias:
                node.input[i] = alias[name]
    return len(alias)


def _drop_zero_bias_zero_points(graph: onnx.GraphProto) -> int:
    """A DequantizeLinear zero point defaults to 0; the quantizer still writes one for each INT32 bias.

    Only INT32 ones: ONNX Runtime's QDQ fusion of Gemm wants the INT8 weight's zero point present.
    """
    tensors = {t.name: t for t in graph.initializer}
    dropped = 0
    for node in graph.node:
        if node.op_type != "DequantizeLinear" or node.domain not in ("", "ai.onnx") or len(node.input) != 3:
            continue
        zero_point = tensors.get(node.input[2])
        if zero_point is None or zero_point.data_type != onnx.TensorProto.INT32:
            continue
        if not numpy_helper.to_array(zero_point).any():
            del node.input[2]
            dropped += 1
    return dropped


def _drop_stale_value_info(graph: onnx.GraphProto) -> int:
    """Shapes of tensors no node makes any more (the pre-processing fused Conv + Relu, say)."""
    known = {name for node in graph.node for name in node.output} | {v.name for v in graph.input}
    keep = [v for v in graph.value_info if v.name in known]
    dropped = len(graph.value_info) - len(keep)
    if dropped:
        del graph.value_info[:]
        graph.value_info.extend(keep)
    return dropped


def _drop_unused_opsets(model: onnx.ModelProto) -> int:
    used = {node.domain or "" for node in model.graph.node} | {""}
    keep = [o for o in model.opset_import if (o.domain or "") in used]
    dropped = len(model.opset_import) - len(keep)
    if dropped:
        del model.opset_import[:]
        model.opset_import.extend(keep)
    return dropped


def _shorten_names(graph: onnx.GraphProto) -> int:
    """Give internal tensors short names; graph inputs and outputs keep theirs (the runtime contract)."""
    fixed = {v.name for v in graph.input} | {v.name for v in graph.output}
    short: dict[str, str] = {}
    counter = 0

    def rename(name: str) -> str:
        nonlocal counter
        if not name or name in fixed:
            return name
        if name not in short:
            while f"t{counter}" in fixed:
                counter += 1
            short[name] = f"t{counter}"
            counter += 1
        return short[name]

    for tensor in graph.initializer:
        tensor.name = rename(tensor.name)
    for info in graph.value_info:
        info.name = rename(info.name)
    for node in graph.node:
        node.input[:] = [rename(n) for n in node.input]
        node.output[:] = [rename(n) for n in node.output]
    return len(short)


def tidy_model(model: onnx.ModelProto) -> TidyResult:
    """Tidy ``model`` in place (see the module docstring) and say what went."""
    graph = model.graph
    before = model.ByteSize()
    result = TidyResult(before, before)
    del model.metadata_props[:]  # the quantizer's own markers ("onnx.quant.pre_process")
    model.doc_string = graph.doc_string = ""
    for node in graph.node:
        node.name = node.doc_string = ""
    result.unused_opsets = _drop_unused_opsets(model)
    result.zero_bias_zero_points = _drop_zero_bias_zero_points(graph)
    # Outer-scope names inside If/Loop bodies are not rewired here: leave such graphs' tensors alone.
    if not _has_subgraphs(graph):
        result.duplicate_initializers = _merge_duplicate_initializers(graph)
        result.unused_initializers = _drop_unused_initializers(graph)
        result.stale_shapes = _drop_stale_value_info(graph)
        result.renamed_tensors = _shorten_names(graph)
    result.bytes_after = model.ByteSize()
    return result


def tidy_file(path: Path) -> TidyResult:
    """Tidy the ONNX file at ``path`` and save it in place (checked by ``onnx.checker`` first)."""
    model = onnx.load(str(path))
    result = tidy_model(model)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    log.info(
        "tidied %s: %d -> %d bytes (initializers: %d unused, %d duplicate; %d zero bias zero points, "
        "%d unused opsets, %d stale shapes, %d tensors renamed)",
        path.name,
        result.bytes_before,
        result.bytes_after,
        result.unused_initializers,
        result.duplicate_initializers,
        result.zero_bias_zero_points,
        result.unused_opsets,
        result.stale_shapes,
        result.renamed_tensors,
    )
    return result
