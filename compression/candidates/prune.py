"""Pruned candidates with ``torch.nn.utils.prune``: unstructured L1 (global over all conv/linear
weights) and structured Ln (whole output channels of each conv/linear but the last layer), each
fine-tuned briefly with the masks in place when training rows are given, then exported to ONNX.

ONNX Runtime does not skip zeros, so pruning alone changes neither file size nor speed; it shrinks
the compressed transfer size, and its value shows in the measured figures, not in assumptions.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np

from edgefleet.compression.candidates.base import BuildContext, Candidate, not_built, technique, tool_version
from edgefleet.compression.training import reference_outputs, train

__all__ = ["prunable_layers", "pruned"]


def prunable_layers(module: object) -> list[tuple[object, str]]:
    import torch

    kinds = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)
    assert isinstance(module, torch.nn.Module)
    return [(m, "weight") for m in module.modules() if isinstance(m, kinds)]


def _prune(ctx: BuildContext, out: Path, method: str, amount: float) -> dict[str, float]:
    import torch
    from torch.nn.utils import prune

    from edgefleet.compression.export import export_onnx

    reference = ctx.reference
    assert reference.module is not None
    module = copy.deepcopy(reference.module)
    layers = prunable_layers(module)
    if not layers:
        raise ValueError("the model has no Linear or Conv layers to prune")
    if method == "l1-unstructured":
        prune.global_unstructured(layers, pruning_method=prune.L1Unstructured, amount=amount)
    else:
        # The last layer's outputs are the model's outputs (classes, embedding dims): never drop them.
        for layer, name in layers[:-1]:
            prune.ln_structured(layer, name, amount=amount, n=2, dim=0)
    epochs = ctx.options.finetune_epochs if ctx.data.train_inputs is not None else 0
    if epochs:
        train_inputs = ctx.data.train_inputs
        assert train_inputs is not None
        teacher = reference_outputs(str(reference.onnx_path), train_inputs)
        options = ctx.options
        train(
            module,
            train_inputs,
            teacher,
            ctx.data.train_labels,
            task=ctx.metric.name,
            epochs=epochs,
            learning_rate=options.learning_rate / 3,
            batch_size=options.batch_size,
            temperature=options.temperature,
            alpha=options.alpha,
            seed=options.seed,
        )
    zeros = total = 0
    for layer, name in layers:
        if prune.is_pruned(layer):
            prune.remove(layer, name)
        weight = getattr(layer, name)
        zeros += int((weight == 0).sum())
        total += weight.numel()
    sample = tuple(torch.from_numpy(np.ascontiguousarray(a[:2])) for a in ctx.data.inputs.values())
    export_onnx(
        module,
        sample,
        out,
        input_names=reference.input_names,
        output_names=reference.output_names,
        dynamic_axes=reference.dynamic_axes,
        opset=ctx.options.opset,
    )
    return {"sparsity": round(zeros / total, 4), "finetune_epochs": epochs}


@technique("prune")
def pruned(ctx: BuildContext) -> list[Candidate]:
    plans = [("l1-unstructured", a) for a in ctx.options.prune_unstructured]
    plans += [("ln-structured", a) for a in ctx.options.prune_structured]
    candidates = []
    for method, amount in plans:
        name = f"pruned-{method.split('-')[0]}-{round(amount * 100)}"
        if ctx.reference.module is None:
            candidates.append(
                not_built(name, "pruned", "fp32", "onnx", "pruning needs the PyTorch model (an ONNX file was given)")
            )
            continue
        candidate = Candidate(
            name,
            "pruned",
            "fp32",
            "onnx",
            frozenset({"cpu", "gpu"}),
            params={
                "method": method,
                "amount": amount,
                "layers": "all conv/linear" if method == "l1-unstructured" else "all conv/linear but the last",
            },
            tool=tool_version("torch"),
        )

        def make(out: Path, method: str = method, amount: float = amount, candidate: Candidate = candidate) -> None:
            candidate.params.update(_prune(ctx, out, method, amount))

        candidate.make = make
        candidates.append(candidate)
    return candidates
