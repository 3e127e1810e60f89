"""PyTorch -> .tflite with ``litert-torch``: the conversions, and a worker that runs them in another environment.

litert-torch cannot share an environment with flwr (typer pins), so ``compression.tflite_export`` runs
this file with the export environment's Python (``scripts/make_tflite_env.sh`` makes one):

    python -P compression/candidates/tflite_worker.py --program model.pt2 --samples samples.npz \
        --out-dir DIR --variants fp32,int8 --result result.json

The model travels as a ``torch.export`` program (no pickled classes, so the user's package need not be
importable there; both environments need the same torch minor version). The worker imports only the
standard library, numpy, torch and litert_torch, never edgefleet, and writes ``result.json``:
``{"versions": {...}, "results": {"fp32": {"path": ..., "seconds": ...}, "int8": {"error": ...}}}``.
litert-torch 0.10 converts fixed shapes only: the model takes the samples' batch size (1).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import sys
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

__all__ = ["VARIANTS", "convert_fp32", "convert_int8", "main"]

VARIANTS = ("fp32", "int8")


def convert_fp32(module: torch.nn.Module, samples: tuple[torch.Tensor, ...], out: Path) -> None:
    """``module`` in eval mode already (a ``torch.export`` program's module refuses ``.eval()``)."""
    import litert_torch

    litert_torch.convert(module, samples).export(str(out))


def convert_int8(module: torch.nn.Module, samples: tuple[torch.Tensor, ...], out: Path) -> None:
    """Dynamic-range INT8 through PT2E: int8 per-channel weights, activations quantized at run time.

    Float inputs and outputs, like every other candidate: static PT2E would make the model's inputs
    int8, which no caller of the agent feeds.
    """
    import litert_torch
    import torch
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    from litert_torch.quantize.quant_config import QuantConfig

    try:
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    except ImportError:
        from torch.ao.quantization.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_dynamic=True))
    graph = prepare_pt2e(torch.export.export(module, samples).module(), quantizer)
    graph(*samples)
    quantized = convert_pt2e(graph, fold_quantize=False)
    litert_torch.convert(quantized, samples, quant_config=QuantConfig(pt2e_quantizer=quantizer)).export(str(out))


def _tensors(path: Path) -> list[np.ndarray]:
    """Arrays saved as in_0, in_1, ... (the model's inputs in order)."""
    with np.load(path) as npz:
        return [np.ascontiguousarray(npz[f"in_{i}"]) for i in range(len(npz.files))]


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _run(args: argparse.Namespace) -> dict[str, object]:
    import torch

    module = torch.export.load(str(args.program)).module()
    samples = tuple(torch.from_numpy(a) for a in _tensors(args.samples))
    results: dict[str, dict[str, object]] = {}
    for variant in args.variants.split(","):
        out = args.out_dir / f"{variant}.tflite"
        started = time.perf_counter()
        try:
            if variant == "fp32":
                convert_fp32(module, samples, out)
            elif variant == "int8":
                convert_int8(module, samples, out)
            else:
                raise ValueError(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
            results[variant] = {"path": str(out), "seconds": time.perf_counter() - started}
        except Exception as exc:
            traceback.print_exc(file=sys.stderr)
            first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
            results[variant] = {"error": f"{type(exc).__name__}: {first}"}
    return {"versions": {p: _version(p) for p in ("litert-torch", "torch")}, "results": results}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Convert a torch.export program to .tflite with litert-torch.")
    parser.add_argument("--program", type=Path, required=True, help="torch.export.save file (.pt2)")
    parser.add_argument("--samples", type=Path, required=True, help="npz of example inputs in_0, in_1, ...")
    parser.add_argument("--out-dir", type=Path, required=True, help="folder for <variant>.tflite")
    parser.add_argument("--variants", default="fp32", help="comma-separated: fp32, int8")
    parser.add_argument("--result", type=Path, required=True, help="JSON file for the outcome of each variant")
    args = parser.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    args.result.write_text(json.dumps(_run(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
