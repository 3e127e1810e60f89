"""Trainable architectures a campaign can name; a bundle's ONNX weights are loaded into them by name.

A campaign names an architecture either by a key registered here or by an import path
(``pkg.module:factory``) whose factory takes the campaign's ``architecture_args`` as keywords.
"""

from __future__ import annotations

import importlib
import itertools
from collections.abc import Callable
from typing import Any

import torch

from edgefleet.federated.errors import CampaignError

__all__ = ["ARCHITECTURES", "Mlp", "architecture", "build_model", "mlp"]

ARCHITECTURES: dict[str, Callable[..., torch.nn.Module]] = {}


def architecture(key: str) -> Callable[[Callable[..., torch.nn.Module]], Callable[..., torch.nn.Module]]:
    def register(factory: Callable[..., torch.nn.Module]) -> Callable[..., torch.nn.Module]:
        ARCHITECTURES[key] = factory
        return factory

    return register


class Mlp(torch.nn.Sequential):
    """A Sequential that can first standardise each sample on its own: (x - mean(x)) / std(x) over the
    features of that one row. It uses no statistics of any data set, so it costs no privacy, adds no
    weights (the names stay those of a plain Sequential) and exports to ONNX as a few element-wise ops.
    Under DP-SGD it keeps every input on one scale, so a small clip norm bounds all samples alike."""

    def __init__(self, *layers: torch.nn.Module, standardize: bool = False) -> None:
        super().__init__(*layers)
        self.standardize = standardize

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.standardize:
            centred = x - x.mean(dim=-1, keepdim=True)
            x = centred / torch.sqrt(centred.pow(2).mean(dim=-1, keepdim=True) + 1e-6)
        return super().forward(x)


@architecture("mlp")
def mlp(sizes: list[int] | None = None, standardize: bool = False) -> torch.nn.Module:
    """Linear layers with ReLU between them; ``sizes`` = [inputs, hidden..., outputs]. The layout
    (``0.weight``, ``2.weight``, ...) is that of the digits MLP the demo and the compressor train.
    ``standardize``: each sample is first scaled to mean 0, variance 1 over its own features (see Mlp)."""
    widths = sizes or [64, 64, 10]
    if len(widths) < 2 or any(int(w) < 1 for w in widths):
        raise CampaignError(f"mlp sizes must be at least two positive widths, got {widths}")
    layers: list[torch.nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(widths)):
        if i:
            layers.append(torch.nn.ReLU())
        layers.append(torch.nn.Linear(int(a), int(b)))
    return Mlp(*layers, standardize=bool(standardize))


def build_model(name: str, args: dict[str, Any] | None = None) -> torch.nn.Module:
    """The untrained module for a registered key or a ``pkg.module:factory`` path."""
    if name in ARCHITECTURES:
        factory = ARCHITECTURES[name]
    elif ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise CampaignError(f"architecture {name!r} cannot be imported ({exc})") from None
    else:
        known = ", ".join(sorted(ARCHITECTURES))
        raise CampaignError(f"unknown architecture {name!r}; use one of {known} or a pkg.module:factory path")
    try:
        model = factory(**(args or {}))
    except TypeError as exc:
        raise CampaignError(f"architecture {name!r} does not take arguments {args}: {exc}") from None
    if not isinstance(model, torch.nn.Module):
        raise CampaignError(f"architecture {name!r} built a {type(model).__name__}, not a torch.nn.Module")
    return model
