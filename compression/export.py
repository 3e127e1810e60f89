"""PyTorch -> ONNX export with a dynamic batch dimension."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

__all__ = ["export_onnx"]


def export_onnx(
    module: torch.nn.Module,
    sample: torch.Tensor | tuple[torch.Tensor, ...],
    out: Path,
    *,
    input_name: str = "input",
    output_name: str = "output",
    opset: int = 17,
    input_names: list[str] | None = None,
    output_names: list[str] | None = None,
    dynamic_axes: dict[str, dict[int, str]] | None = None,
) -> Path:
    """Export ``module`` to a single self-contained ONNX file with a dynamic first dimension.

    Uses the TorchScript exporter: for the small feed-forward models of the edge it is ~20x faster
    than the dynamo exporter here and writes one file instead of a model plus external data.

    A model with several inputs or outputs passes a tuple of samples with ``input_names`` and
    ``output_names``; ``dynamic_axes`` replaces the default (the first axis of every input and
    output is ``batch``), e.g. to make a sequence axis dynamic too.
    """
    samples = sample if isinstance(sample, tuple) else (sample,)
    inputs = input_names or [input_name]
    outputs = output_names or [output_name]
    axes = dynamic_axes or {name: {0: "batch"} for name in [*inputs, *outputs]}
    module.eval()
    out.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=FutureWarning)
        torch.onnx.export(
            module,
            samples,
            str(out),
            input_names=inputs,
            output_names=outputs,
            dynamic_axes=axes,
            opset_version=opset,
            dynamo=False,
        )
    return out
