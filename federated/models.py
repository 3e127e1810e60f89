"""Trainable architectures a campaign can name; a bundle's ONNX weights are loaded into them by name.

A campaign names an architecture by a key registered here, by the name of an installed
``edgefleet.architectures`` entry point, or by an import path (``pkg.module:factory``) that the
process's own configuration allows: ``[campaigns] architectures`` on the coordinator, ``[federated]
architectures`` on a device. Nothing a request or a message names is imported otherwise: a spec is
data, and the code it may run is chosen by whoever administers the machine. The factory takes the
campaign's ``architecture_args`` as keywords.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import itertools
from collections.abc import Callable, Collection
from typing import Any

import torch

from edgefleet.federated.errors import CampaignError

__all__ = ["ARCHITECTURES", "ENTRY_POINT_GROUP", "Mlp", "architecture", "build_model", "check_architecture", "mlp"]

ARCHITECTURES: dict[str, Callable[..., torch.nn.Module]] = {}
ENTRY_POINT_GROUP = "edgefleet.architectures"  # installed packages name their factories here


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


@functools.cache
def _entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    """The installed edgefleet.architectures entry points (read once: scanning every distribution costs ms)."""
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def check_architecture(name: str, allowed: Collection[str] = ()) -> None:
    """Refuse (CampaignError) an architecture that is neither registered, installed as an entry point,
    nor an import path in ``allowed``; nothing is imported or called."""
    if name in ARCHITECTURES or name in allowed or name in _entry_points():
        return
    known = ", ".join(sorted({*ARCHITECTURES, *_entry_points(), *allowed}))
    if ":" in name:
        raise CampaignError(
            f"architecture {name!r} is not allowed: an import path must be listed by this machine's admin "
            f"([campaigns] architectures on the coordinator, [federated] architectures on a device); "
            f"allowed here: {known}"
        )
    raise CampaignError(f"unknown architecture {name!r}; use one of {known}")


def build_model(name: str, args: dict[str, Any] | None = None, *, allowed: Collection[str] = ()) -> torch.nn.Module:
    """The untrained module for a registered key, an entry point, or a ``pkg.module:factory`` in ``allowed``."""
    check_architecture(name, allowed)
    if name in ARCHITECTURES:
        factory = ARCHITECTURES[name]
    else:
        try:
            entry = _entry_points().get(name)
            if entry is not None:
                factory = entry.load()
            else:
                module_name, _, attr = name.partition(":")
                factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise CampaignError(f"architecture {name!r} cannot be imported ({exc})") from None
    try:
        model = factory(**(args or {}))
    except TypeError as exc:
        raise CampaignError(f"architecture {name!r} does not take arguments {args}: {exc}") from None
    if not isinstance(model, torch.nn.Module):
        raise CampaignError(f"architecture {name!r} built a {type(model).__name__}, not a torch.nn.Module")
    return model
