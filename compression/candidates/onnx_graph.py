"""FP32 candidates: the reference export itself, and ONNX Runtime's offline graph optimisation of it."""

from __future__ import annotations

import shutil
from pathlib import Path

import onnxruntime as ort

from edgefleet.compression.candidates.base import BuildContext, Candidate, technique, tool_version

__all__ = ["fp32", "ort_optimized", "reference_name", "write_optimized"]


def reference_name(ctx: BuildContext) -> str:
    return "fp32" if ctx.reference.precision == "fp32" else "int8-input"


@technique("fp32")
def fp32(ctx: BuildContext) -> list[Candidate]:
    """The FP32 ONNX export: the reference every other candidate is measured against.

    An ONNX file that is already quantized is the reference as given, labelled INT8 ("int8-input").
    """

    def make(out: Path) -> None:
        shutil.copyfile(ctx.reference.onnx_path, out)

    precision = ctx.reference.precision
    return [
        Candidate(
            reference_name(ctx),
            "fp32" if precision == "fp32" else "as-given",
            precision,
            "onnx",
            frozenset({"cpu", "gpu"}),
            params={"opset": ctx.options.opset, "origin": ctx.reference.origin},
            tool=tool_version("torch", "onnx") if ctx.reference.module is not None else tool_version("onnx"),
            make=make,
        )
    ]


def write_optimized(source: Path, out: Path, level: ort.GraphOptimizationLevel) -> None:
    """Let ONNX Runtime optimise the graph and save the result (``optimized_model_filepath``)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    options.optimized_model_filepath = str(out)
    options.log_severity_level = 3
    ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
    if not out.is_file():
        raise RuntimeError("ONNX Runtime wrote no optimized model")


@technique("ort-opt")
def ort_optimized(ctx: BuildContext) -> list[Candidate]:
    """Extended-level fusions (e.g. FusedGemm, attention, GELU) saved offline.

    Extended optimisations may introduce CPU-provider contrib operators, and ONNX Runtime says an
    offline-optimised model must run where it was optimised: so this candidate is for CPU classes.
    """

    def make(out: Path) -> None:
        write_optimized(ctx.reference.onnx_path, out, ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED)

    return [
        Candidate(
            reference_name(ctx) + "-ort-opt",
            "fp32" if ctx.reference.precision == "fp32" else "ort-opt",
            ctx.reference.precision,
            "onnx",
            frozenset({"cpu"}),
            params={"graph_optimization_level": "extended", "execution_provider": "CPUExecutionProvider"},
            tool=tool_version("onnxruntime"),
            make=make,
        )
    ]
