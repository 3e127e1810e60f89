"""TFLite candidates (FP32 and dynamic-range INT8) with ``litert-torch``, in this process or in a separate environment.

litert-torch pulls jax, transformers and a newer typer than flwr allows, so it usually lives in its own
environment (``scripts/make_tflite_env.sh``), named by ``BuildOptions.tflite_python`` (``--tflite-python``
or ``EDGEFLEET_TFLITE_PYTHON``); ``compression.tflite_export`` runs the conversion there. Without one,
litert-torch is used in this process where it is importable; otherwise, or where the named environment
is unusable, the candidates are listed as not built with the reason. LiteRT (``ai-edge-litert``) runs
the results. litert-torch converts fixed shapes only, so the models take one row per call.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

import numpy as np

from edgefleet.compression.candidates.base import BuildContext, Candidate, Param, not_built, technique, tool_version
from edgefleet.compression.candidates.tflite_export import EnvExport, TfliteEnvError, probe_env

__all__ = ["INSTALL_HINT", "tflite"]

INSTALL_HINT = "litert-torch not installed (pip install edgefleet[tflite-export])"
BATCH = 1  # litert-torch 0.10 cannot lower a dynamic batch (google-ai-edge/litert-torch#870)


def _samples(ctx: BuildContext) -> list[np.ndarray]:
    return [np.ascontiguousarray(a[:BATCH]) for a in ctx.data.inputs.values()]


def _in_process(ctx: BuildContext, variant: str) -> Callable[[Path], None]:
    def make(out: Path) -> None:
        import torch

        from edgefleet.compression.candidates.tflite_worker import convert_fp32, convert_int8

        assert ctx.reference.module is not None
        module = ctx.reference.module.eval()
        samples = tuple(torch.from_numpy(a) for a in _samples(ctx))
        if variant == "fp32":
            convert_fp32(module, samples, out)
        else:
            convert_int8(module, samples, out)

    return make


@technique("tflite")
def tflite(ctx: BuildContext) -> list[Candidate]:
    python = ctx.options.tflite_python
    reason = None
    versions: dict[str, str] = {}
    if ctx.reference.module is None:
        reason = "TFLite export needs the PyTorch model (an ONNX file was given)"
    elif python is not None:
        try:
            versions = probe_env(python)
        except TfliteEnvError as exc:
            reason = str(exc)
    elif importlib.util.find_spec("litert_torch") is None:
        reason = INSTALL_HINT
    if reason is not None:
        return [
            not_built("tflite-fp32", "tflite", "fp32", "tflite", reason),
            not_built("tflite-int8", "tflite", "int8", "tflite", reason),
        ]
    assert ctx.reference.module is not None
    common: dict[str, Param] = {"converter": "litert_torch.convert", "batch": BATCH}
    if python is not None:
        job = EnvExport(
            python,
            ctx.reference.module,
            _samples(ctx),
            ctx.scratch / "tflite",
            ["fp32", "int8"],
            ctx.options.tflite_timeout_s,
        )
        common["export_env"] = python
        tool = f"litert-torch {versions.get('litert-torch')}, torch {versions.get('torch')} (export env)"
        make_fp32: Callable[[Path], None] = lambda out: job.make("fp32", out)  # noqa: E731
        make_int8: Callable[[Path], None] = lambda out: job.make("int8", out)  # noqa: E731
    else:
        tool = tool_version("litert-torch", "torch")
        make_fp32, make_int8 = _in_process(ctx, "fp32"), _in_process(ctx, "int8")
    return [
        Candidate("tflite-fp32", "tflite", "fp32", "tflite", frozenset({"cpu"}), dict(common), tool, make_fp32),
        Candidate(
            "tflite-int8",
            "tflite",
            "int8",
            "tflite",
            frozenset({"cpu"}),
            {**common, "quantizer": "PT2E dynamic-range, per-channel weights"},
            tool,
            make_int8,
        ),
    ]
