"""Inference backends, one per module, each registered under a key.

Backends are imported here one by one so that a backend whose package is missing reports why
(``import_errors``) instead of breaking the others.
"""

from __future__ import annotations

import importlib
import logging

from agent.runtimes.base import RUNTIMES, Runtime, register_runtime

__all__ = ["RUNTIMES", "Runtime", "import_errors", "register_runtime"]

log = logging.getLogger(__name__)

_BACKENDS = ("onnx_cpu",)
import_errors: dict[str, str] = {}

for _module in _BACKENDS:
    try:
        importlib.import_module(f"agent.runtimes.{_module}")
    except ImportError as exc:
        import_errors[_module] = f"{_module}: not installed ({exc.name or exc})"
        log.info("runtime backend %s unavailable: %s", _module, import_errors[_module])
