"""INT8 candidates with ``onnxruntime.quantization``: dynamic (weights INT8, activations quantized at
run time) in per-tensor / per-channel / reduce-range variants, and static QDQ calibrated on data.

Each quantized file is tidied (``compression.onnx_tidy``): the quantizer's long names, unused opsets,
duplicate tensors and zero bias zero points go, which on a small model is a tenth of the file.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from edgefleet.compression.candidates.base import BuildContext, Candidate, Param, technique, tool_version
from edgefleet.compression.errors import CompressionError
from edgefleet.compression.tidy import tidy_file

__all__ = ["ArrayReader", "constants_to_initializers", "int8_dynamic", "int8_static", "quantize_dynamic_file"]

log = logging.getLogger(__name__)

DYNAMIC_VARIANTS = {
    # name suffix, per_channel, reduce_range
    "per-tensor": ("", False, False),
    "per-channel": ("-pc", True, False),
    "per-channel-rr": ("-pc-rr", True, True),
}


def constants_to_initializers(model: onnx.ModelProto) -> int:
    """Turn weight-carrying ``Constant`` nodes into initializers, which the quantizer needs; return how many."""
    graph = model.graph
    keep, moved = [], 0
    for node in graph.node:
        value = next((a for a in node.attribute if a.name == "value" and a.type == onnx.AttributeProto.TENSOR), None)
        if node.op_type == "Constant" and value is not None and len(node.output) == 1:
            tensor = numpy_helper.from_array(numpy_helper.to_array(value.t), node.output[0])
            graph.initializer.append(tensor)
            moved += 1
        else:
            keep.append(node)
    if moved:
        del graph.node[:]
        graph.node.extend(keep)
    return moved


def prepared(ctx: BuildContext, source: Path | None = None) -> Path:
    """The model ready for the quantizer (initializers, shape inference, ORT pre-processing), made once."""
    source = source or ctx.reference.onnx_path
    out = ctx.scratch / f"{source.stem}.quant-prep.onnx"
    if out.is_file():
        return out
    model = onnx.load(str(source))
    moved = constants_to_initializers(model)
    staged = ctx.scratch / f"{source.stem}.initializers.onnx"
    onnx.save(model, str(staged))
    try:
        quant_pre_process(str(staged), str(out))
    except Exception as exc:  # pre-processing only helps; quantizing the raw graph still works
        log.warning("quantization pre-processing failed (%s); quantizing the graph as exported", exc)
        onnx.save(model, str(out))
    if moved:
        log.info("moved %d Constant nodes to initializers before quantization", moved)
    return out


class ArrayReader(CalibrationDataReader):
    """Feeds calibration rows to the static quantizer in batches."""

    def __init__(self, inputs: dict[str, np.ndarray], batch: int = 32) -> None:
        rows = len(next(iter(inputs.values())))
        self._batches: Iterator[dict[str, np.ndarray]] = iter(
            [{name: a[start : start + batch] for name, a in inputs.items()} for start in range(0, rows, batch)]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def quantize_dynamic_file(source: Path, out: Path, *, per_channel: bool, reduce_range: bool) -> None:
    quantize_dynamic(
        str(source), str(out), per_channel=per_channel, reduce_range=reduce_range, weight_type=QuantType.QInt8
    )
    tidy_file(out)


@technique("int8-dynamic")
def int8_dynamic(ctx: BuildContext) -> list[Candidate]:
    """Weights to INT8 ahead of time, activations quantized per batch: no calibration data needed.

    Runs as MatMulInteger / ConvInteger on the CPU provider (GPU providers lack these kernels).
    """
    candidates = []
    for variant in ctx.options.dynamic_variants:
        if variant not in DYNAMIC_VARIANTS:
            raise CompressionError(f"unknown dynamic INT8 variant {variant!r}; known: {', '.join(DYNAMIC_VARIANTS)}")
        suffix, per_channel, reduce_range = DYNAMIC_VARIANTS[variant]

        def make(out: Path, per_channel: bool = per_channel, reduce_range: bool = reduce_range) -> None:
            quantize_dynamic_file(prepared(ctx), out, per_channel=per_channel, reduce_range=reduce_range)

        candidates.append(
            Candidate(
                "int8-dynamic" + suffix,
                "int8-dynamic",
                "int8",
                "onnx",
                frozenset({"cpu"}),
                params={"per_channel": per_channel, "reduce_range": reduce_range, "weight_type": "QInt8"},
                tool=tool_version("onnxruntime"),
                make=make,
            )
        )
    return candidates


@technique("int8-static")
def int8_static(ctx: BuildContext) -> list[Candidate]:
    """Weights and activations INT8 in QDQ form, activation ranges calibrated (MinMax) on data rows."""
    inputs, split = ctx.data.calibration()
    rows = min(ctx.options.calibration_rows, len(next(iter(inputs.values()))))
    per_channel = ctx.options.static_per_channel

    def make(out: Path) -> None:
        reader = ArrayReader({name: array[:rows] for name, array in inputs.items()})
        quantize_static(
            str(prepared(ctx)),
            str(out),
            reader,
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
        )
        tidy_file(out)

    params: dict[str, Param] = {
        "format": "QDQ",
        "per_channel": per_channel,
        "activation_type": "QInt8",
        "weight_type": "QInt8",
        "calibration": "MinMax",
        "calibration_rows": rows,
        "calibration_split": split,
    }
    name = "int8-static" + ("-pc" if per_channel else "")
    return [
        Candidate(name, "int8-static", "int8", "onnx", frozenset({"cpu"}), params, tool_version("onnxruntime"), make)
    ]
