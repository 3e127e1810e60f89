"""Inference backends, one per module, each registered under a key, and the fallback chain.

A backend's module is imported the first time a chain reaches it, so a device pays the memory of
only the backends it tries (LiteRT alone costs ~24 MB), and a backend whose package is missing
reports why (``import_errors``) instead of breaking the others.
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path

from edgefleet.agent.runtimes.base import RUNTIMES, Runtime, RuntimeOptions, register_runtime

__all__ = [
    "KNOWN_RUNTIMES",
    "RUNTIMES",
    "Runtime",
    "RuntimeOptions",
    "backend",
    "import_errors",
    "open_runtime",
    "register_runtime",
    "skip_reason",
]

log = logging.getLogger(__name__)

# backend key -> the module under agent/runtimes/ that registers it
_MODULES: dict[str, str] = {
    "onnxruntime-cpu": "onnx_cpu",
    "onnxruntime-cuda": "onnx_gpu",
    "onnxruntime-tensorrt": "onnx_gpu",
    "litert": "litert",
    "tensorrt": "tensorrt_native",
}
KNOWN_RUNTIMES = frozenset(_MODULES)
import_errors: dict[str, str] = {}


def backend(key: str) -> type[Runtime] | None:
    """The class registered under ``key``, importing its module on first use; None if it cannot import."""
    if key not in RUNTIMES and key not in import_errors and key in _MODULES:
        module = _MODULES[key]
        try:
            importlib.import_module(f"edgefleet.agent.runtimes.{module}")
        except ImportError as exc:
            for other, other_module in _MODULES.items():
                if other_module == module:
                    import_errors[other] = f"{other}: not installed ({exc.name or exc})"
            log.info("runtime backend %s unavailable: %s", module, exc)
    return RUNTIMES.get(key)


def skip_reason(key: str, model_format: str) -> str | None:
    """Why ``key`` cannot serve a model of ``model_format`` here, or None if it can try."""
    if key not in KNOWN_RUNTIMES:
        return f"{key}: unknown runtime"
    cls = backend(key)
    if cls is None:
        return import_errors[key]
    if model_format not in cls.formats:
        return f"{key}: does not load {model_format} models"
    reason = cls.unavailable_reason()
    return None if reason is None else f"{key}: {reason}"


def open_runtime(
    chain: list[str], model_format: str, model_path: Path, options: RuntimeOptions
) -> tuple[Runtime, list[str]]:
    """Load the model on the first backend of ``chain`` that can; return it and why each earlier one was skipped.

    Raises RuntimeError listing every reason when none can.
    """
    skipped: list[str] = []
    for key in chain:
        reason = skip_reason(key, model_format)
        if reason is None:
            try:
                return RUNTIMES[key](model_path, options), skipped
            except Exception as exc:  # backends raise their own types; the next one may still work
                reason = f"{key}: failed to load ({exc})"
                log.warning("runtime %s", reason)
        skipped.append(reason)
    raise RuntimeError("no runtime could load the model: " + "; ".join(skipped))
