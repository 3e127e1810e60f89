"""From a trained model to signed bundles per device class: export, quantize, prune, distill, measure,
select, bundle, sign.

``compress`` and the report types are imported on first use, so ``compression.builder`` stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgefleet.compression.candidates.base import BuildOptions
    from edgefleet.compression.data import EvalData
    from edgefleet.compression.evaluate import EvalOptions
    from edgefleet.compression.pipeline import Example, compress
    from edgefleet.compression.report import CompressionReport

__all__ = ["BuildOptions", "CompressionReport", "EvalData", "EvalOptions", "Example", "compress"]

_LAZY = {
    "compress": "edgefleet.compression.pipeline",
    "Example": "edgefleet.compression.pipeline",
    "BuildOptions": "edgefleet.compression.candidates.base",
    "EvalOptions": "edgefleet.compression.evaluate",
    "EvalData": "edgefleet.compression.data",
    "CompressionReport": "edgefleet.compression.report",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'compression' has no attribute {name!r}")
