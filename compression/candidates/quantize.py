"""INT8 candidates with ``onnxruntime.quantization``: dynamic (weights INT8, activations quantized at
run time) in per-tensor / per-channel / reduce-range variants, and static QDQ calibrated on data.

Each quantized file is tidied (``compression.onnx_tidy``): the quantizer's long names, unused opsets,
duplicate tensors and zero bias zero points go, which on a small model is a tenth of the file.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnx.version_converter
from onnx import numpy_helper
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, quantize_static

from edgefleet.compression.candidates.base import (
    BuildContext,
    Candidate,
    Param,
    already_quantized,
    technique,
    tool_version,
)
from edgefleet.compression.errors import CompressionError
from edgefleet.compression.tidy import tidy_file

__all__ = ["ArrayReader", "constants_to_initializers", "int8_dynamic", "int8_static", "quantize_dynamic_file"]

log = logging.getLogger(__name__)

PREP_TIMEOUT_S = 600.0
QDQ_OPSET = 13  # DequantizeLinear's axis (per-channel scales) arrived in opset 13

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
    """The model ready for the quantizer (initializers, shape inference, ORT pre-processing), made once.

    The pre-processing runs in a child process inside the run's temporary folder
    (``compression.candidates.prep_worker``): ONNX Runtime writes files to the current directory there.
    """
    source = source or ctx.reference.onnx_path
    out = ctx.scratch / f"{source.stem}.quant-prep.onnx"
    if out.is_file():
        return out
    model = onnx.load(str(source))
    moved = constants_to_initializers(model)
    staged = ctx.scratch / f"{source.stem}.initializers.onnx"
    onnx.save(model, str(staged))
    if moved:
        log.info("moved %d Constant nodes to initializers before quantization", moved)
    command = [sys.executable, "-m", "edgefleet.compression.candidates.prep_worker", str(staged), str(out)]
    try:
        done = subprocess.run(command, cwd=ctx.temp, capture_output=True, text=True, timeout=PREP_TIMEOUT_S)
        lines = done.stdout.strip().splitlines()
        result = json.loads(lines[-1]) if lines else {"error": done.stderr.strip()[-300:]}
    except (subprocess.TimeoutExpired, json.JSONDecodeError) as exc:
        result = {"error": f"{type(exc).__name__}: {exc}"}
        done = None
    if done is None or done.returncode != 0 or not out.is_file():
        # Pre-processing only helps; quantizing the raw graph still works.
        log.warning("quantization pre-processing failed (%s); quantizing the graph as exported", result["error"])
        onnx.save(model, str(out))
    elif not result.get("symbolic_shapes"):
        log.info("quantization pre-processing without symbolic shapes (%s)", result["error"])
    return out


def model_opset(path: Path) -> int:
    """The default-domain opset of the ONNX file at ``path``."""
    model = onnx.load(str(path), load_external_data=False)
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def upgraded(ctx: BuildContext, opset: int = QDQ_OPSET) -> Path:
    """The reference converted to ``opset`` with ONNX's version converter (made once), or a
    CompressionError that says why it cannot be."""
    out = ctx.scratch / f"{ctx.reference.onnx_path.stem}.opset{opset}.onnx"
    if out.is_file():
        return out
    source = model_opset(ctx.reference.onnx_path)
    try:
        model = onnx.version_converter.convert_version(onnx.load(str(ctx.reference.onnx_path)), opset)
        onnx.checker.check_model(model)
    except Exception as exc:
        text = str(exc).strip()
        raise CompressionError(
            f"static INT8 (QDQ with per-channel DequantizeLinear, its axis attribute) needs opset {opset}; "
            f"onnx.version_converter cannot upgrade this opset-{source} model: {type(exc).__name__}: "
            f"{text.splitlines()[0][:300] if text else ''}"
        ) from None
    onnx.save(model, str(out))
    log.info("upgraded the reference from opset %d to %d for static INT8", source, opset)
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
    unknown = [v for v in ctx.options.dynamic_variants if v not in DYNAMIC_VARIANTS]
    if unknown:
        raise CompressionError(f"unknown dynamic INT8 variant {unknown[0]!r}; known: {', '.join(DYNAMIC_VARIANTS)}")
    skipped = already_quantized(
        ctx, ["int8-dynamic" + DYNAMIC_VARIANTS[v][0] for v in ctx.options.dynamic_variants], "int8-dynamic", "int8"
    )
    if skipped is not None:
        return skipped
    for variant in ctx.options.dynamic_variants:
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
    """Weights and activations INT8 in QDQ form, activation ranges calibrated (MinMax) on data rows.

    A reference below opset 13 is upgraded first (``upgraded``): per-channel DequantizeLinear needs it.
    """
    inputs, split = ctx.data.calibration()
    rows = min(ctx.options.calibration_rows, len(next(iter(inputs.values()))))
    per_channel = ctx.options.static_per_channel
    name = "int8-static" + ("-pc" if per_channel else "")
    skipped = already_quantized(ctx, [name], "int8-static", "int8")
    if skipped is not None:
        return skipped

    opset = model_opset(ctx.reference.onnx_path)

    def make(out: Path) -> None:
        source = upgraded(ctx) if opset < QDQ_OPSET else None
        reader = ArrayReader({name: array[:rows] for name, array in inputs.items()})
        quantize_static(
            str(prepared(ctx, source)),
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
    if opset < QDQ_OPSET:
        params["opset"] = f"{opset} -> {QDQ_OPSET} (onnx.version_converter)"
    return [
        Candidate(name, "int8-static", "int8", "onnx", frozenset({"cpu"}), params, tool_version("onnxruntime"), make)
    ]
