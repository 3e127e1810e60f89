"""From a trained model to signed bundles per device class: export, quantize, prune, distill, measure,
select, bundle, sign.

``compress`` and the report types are imported on first use, so ``compression.builder`` stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from compression.candidates.base import BuildOptions
    from compression.data import EvalData
    from compression.evaluate import EvalOptions
    from compression.pipeline import Example, compress
    from compression.report import CompressionReport

__all__ = ["BuildOptions", "CompressionReport", "EvalData", "EvalOptions", "Example", "compress"]

_LAZY = {
    "compress": "compression.pipeline",
    "Example": "compression.pipeline",
    "BuildOptions": "compression.candidates.base",
    "EvalOptions": "compression.evaluate",
    "EvalData": "compression.data",
    "CompressionReport": "compression.report",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'compression' has no attribute {name!r}")
