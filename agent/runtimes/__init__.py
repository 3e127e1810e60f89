"""Inference backends, one per module, each registered under a key, and the fallback chain.

Backends are imported one by one so that a backend whose package is missing reports why
(``import_errors``) instead of breaking the others.
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path

from agent.runtimes.base import RUNTIMES, Runtime, RuntimeOptions, register_runtime

__all__ = ["RUNTIMES", "Runtime", "RuntimeOptions", "import_errors", "open_runtime", "register_runtime", "skip_reason"]

log = logging.getLogger(__name__)

# module -> the backend keys it registers (so a failed import can be named per key)
_BACKENDS: dict[str, tuple[str, ...]] = {
    "onnx_cpu": ("onnxruntime-cpu",),
    "onnx_gpu": ("onnxruntime-cuda", "onnxruntime-tensorrt"),
    "litert": ("litert",),
    "tensorrt_native": ("tensorrt",),
}
import_errors: dict[str, str] = {}

for _module, _keys in _BACKENDS.items():
    try:
        importlib.import_module(f"agent.runtimes.{_module}")
    except ImportError as exc:
        for _key in _keys:
            import_errors[_key] = f"{_key}: not installed ({exc.name or exc})"
        log.info("runtime backend %s unavailable: %s", _module, exc)


def skip_reason(key: str, model_format: str) -> str | None:
    """Why ``key`` cannot serve a model of ``model_format`` here, or None if it can try."""
    if key in import_errors:
        return import_errors[key]
    cls = RUNTIMES.get(key)
    if cls is None:
        return f"{key}: unknown runtime"
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
