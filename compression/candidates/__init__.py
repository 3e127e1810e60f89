"""Candidates made from a reference model, one technique per module, and the runner that builds them.

Every technique module is imported here explicitly (an import error is loud, not a missing entry).
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable

from edgefleet.compression.candidates import distill, fp16, onnx_graph, prune, quantize, tensorrt, tflite
from edgefleet.compression.candidates.base import (
    TECHNIQUES,
    BuildContext,
    BuildOptions,
    Candidate,
    Measurement,
    technique,
)
from edgefleet.compression.errors import CompressionError

__all__ = [
    "DEFAULT_TECHNIQUES",
    "TECHNIQUES",
    "BuildContext",
    "BuildOptions",
    "Candidate",
    "Measurement",
    "build_candidates",
    "plan_candidates",
    "technique",
]

log = logging.getLogger(__name__)
_MODULES = (onnx_graph, quantize, fp16, prune, distill, tflite, tensorrt)  # each registers its techniques

DEFAULT_TECHNIQUES = [
    "fp32",
    "ort-opt",
    "int8-dynamic",
    "int8-static",
    "fp16",
    "prune",
    "distill",
    "tflite",
    "tensorrt",
]


def plan_candidates(ctx: BuildContext, techniques: list[str] | None = None) -> list[Candidate]:
    """The candidates the named techniques plan (``fp32``, the reference, is always first)."""
    keys = list(techniques or DEFAULT_TECHNIQUES)
    unknown = sorted(set(keys) - set(TECHNIQUES))
    if unknown:
        raise CompressionError(f"unknown techniques {unknown}; known: {', '.join(TECHNIQUES)}")
    if "fp32" in keys:
        keys.remove("fp32")
    candidates: list[Candidate] = []
    for key in ["fp32", *keys]:
        candidates.extend(TECHNIQUES[key](ctx))
    names = [c.name for c in candidates]
    if len(set(names)) != len(names):
        raise CompressionError(f"techniques planned duplicate candidate names: {names}")
    return candidates


def build_candidates(
    ctx: BuildContext, candidates: list[Candidate], on_step: Callable[[Candidate], None] | None = None
) -> list[Candidate]:
    """Build each planned candidate into ``ctx.workdir``; a failure is recorded on it, never raised."""
    folder = ctx.workdir / "candidates"
    folder.mkdir(parents=True, exist_ok=True)
    for candidate in candidates:
        if candidate.status == "planned" and candidate.make is not None:
            out = folder / candidate.filename
            start = time.perf_counter()
            try:
                candidate.make(out)
                if not out.is_file():
                    raise RuntimeError(f"the technique wrote no file at {out}")
                candidate.status, candidate.path = "built", out
            except Exception as exc:
                candidate.status = "failed"
                candidate.reason = (
                    f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
                )
                log.warning("candidate %s failed to build: %s", candidate.name, candidate.reason)
                log.debug("%s", traceback.format_exc())
            candidate.build_s = time.perf_counter() - start
        if on_step is not None:
            on_step(candidate)
    return candidates
