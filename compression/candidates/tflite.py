"""TFLite candidates (FP32 and INT8) with ``litert-torch``, built only where it is importable.

litert-torch pulls jax, transformers and a newer typer than flwr allows, so it lives in its own
extra (``edgefleet[tflite-export]``), ideally in a separate environment; where it is missing the
candidates are listed as not built with that reason. LiteRT (``ai-edge-litert``) runs the results.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from compression.candidates.base import BuildContext, Candidate, not_built, technique, tool_version

__all__ = ["INSTALL_HINT", "tflite"]

INSTALL_HINT = "litert-torch not installed (pip install edgefleet[tflite-export])"


def _samples(ctx: BuildContext) -> tuple[object, ...]:
    import torch

    return tuple(torch.from_numpy(np.ascontiguousarray(a[:1])) for a in ctx.data.inputs.values())


def _convert_fp32(ctx: BuildContext, out: Path) -> None:
    import litert_torch

    assert ctx.reference.module is not None
    litert_torch.convert(ctx.reference.module.eval(), _samples(ctx)).export(str(out))


def _convert_int8(ctx: BuildContext, out: Path, rows: int) -> None:
    """Static INT8 through PT2E: export, insert observers, calibrate on data rows, convert, lower."""
    import litert_torch
    import torch
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    from litert_torch.quantize.quant_config import QuantConfig

    try:
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    except ImportError:
        from torch.ao.quantization.quantize_pt2e import convert_pt2e, prepare_pt2e

    assert ctx.reference.module is not None
    samples = _samples(ctx)
    quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False))
    graph = prepare_pt2e(torch.export.export(ctx.reference.module.eval(), samples).module(), quantizer)
    inputs, _ = ctx.data.calibration()
    for i in range(min(rows, len(next(iter(inputs.values()))))):
        graph(*(torch.from_numpy(np.ascontiguousarray(a[i : i + 1])) for a in inputs.values()))
    quantized = convert_pt2e(graph, fold_quantize=False)
    litert_torch.convert(quantized, samples, quant_config=QuantConfig(pt2e_quantizer=quantizer)).export(str(out))


@technique("tflite")
def tflite(ctx: BuildContext) -> list[Candidate]:
    reason = None
    if ctx.reference.module is None:
        reason = "TFLite export needs the PyTorch model (an ONNX file was given)"
    elif importlib.util.find_spec("litert_torch") is None:
        reason = INSTALL_HINT
    if reason is not None:
        return [
            not_built("tflite-fp32", "tflite", "fp32", "tflite", reason),
            not_built("tflite-int8", "tflite", "int8", "tflite", reason),
        ]
    rows = min(ctx.options.calibration_rows, 64)
    tool = tool_version("litert-torch", "torch")
    return [
        Candidate(
            "tflite-fp32",
            "tflite",
            "fp32",
            "tflite",
            frozenset({"cpu"}),
            {"converter": "litert_torch.convert"},
            tool,
            lambda out: _convert_fp32(ctx, out),
        ),
        Candidate(
            "tflite-int8",
            "tflite",
            "int8",
            "tflite",
            frozenset({"cpu"}),
            {"converter": "litert_torch.convert", "quantizer": "PT2E static, per-channel", "calibration_rows": rows},
            tool,
            lambda out: _convert_int8(ctx, out, rows),
        ),
    ]
