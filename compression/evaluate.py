"""Measure every built candidate on the runtime it will run on (the agent's ONNX Runtime CPU or LiteRT
backend): task metric and drop vs the reference, median latency at batch 1 and batch N, size on disk,
compressed transfer size, and peak memory.

Memory is measured in a subprocess by default (``compression.memprobe``: a fresh interpreter loads
and runs the model, peak RSS minus RSS after imports); ``in-process`` is a cheaper best effort (RSS
growth of this process across load and run, blind to memory freed before it is read); ``off`` skips.
"""

from __future__ import annotations

import json
import logging
import statistics
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import psutil

from edgefleet.agent.runtimes import Runtime, RuntimeOptions, backend, import_errors
from edgefleet.compression.candidates.base import Candidate, Measurement
from edgefleet.compression.data import EvalData
from edgefleet.compression.metrics import Metric, cosine_rows

__all__ = ["EvalOptions", "evaluate_candidates", "feed_names", "fixed_batch", "open_runtime_for", "run_rows"]

log = logging.getLogger(__name__)

MiB = 1024 * 1024
MemoryMethod = Literal["subprocess", "in-process", "off"]


@dataclass
class EvalOptions:
    threads: int = 1  # intra-op threads while timing: one is steadier here and closest to a small board's core
    batch_n: int = 32
    latency_runs: int = 50
    latency_budget_s: float = 1.0  # per batch size and candidate
    memory: MemoryMethod = "subprocess"


def open_runtime_for(candidate: Candidate, threads: int) -> tuple[Runtime, str]:
    key = "litert" if candidate.model_format == "tflite" else "onnxruntime-cpu"
    if candidate.model_format not in ("onnx", "tflite"):
        raise RuntimeError(f"{candidate.model_format} models are not evaluated here")
    cls = backend(key)
    if cls is None:
        raise RuntimeError(import_errors.get(key, f"{key}: unavailable"))
    assert candidate.path is not None
    return cls(candidate.path, RuntimeOptions(intra_op_threads=threads, inter_op_threads=1)), key


def feed_names(runtime: Runtime, names: list[str]) -> dict[str, str]:
    """Reference input name -> the candidate's (the same, or by position when a converter renamed them)."""
    own = [s.name for s in runtime.inputs]
    if set(own) == set(names):
        return {n: n for n in names}
    if len(own) != len(names):
        raise RuntimeError(f"the candidate has inputs {own}; the reference {names}")
    return dict(zip(names, own, strict=True))


def fixed_batch(runtime: Runtime) -> int | None:
    """The batch size a model is fixed to (litert-torch exports fixed shapes), or None when it is dynamic."""
    first = {spec.shape[0] if spec.shape else None for spec in runtime.inputs}
    return first.pop() if len(first) == 1 and None not in first else None


def run_rows(runtime: Runtime, inputs: dict[str, np.ndarray], batch: int, output: str) -> np.ndarray:
    """One output of ``runtime`` over all rows, in batches of ``batch`` (of its fixed batch, if it has one)."""
    mapping = feed_names(runtime, list(inputs))
    batch = fixed_batch(runtime) or batch
    rows = len(next(iter(inputs.values())))
    parts = []
    for start in range(0, rows, batch):
        feeds = {mapping[n]: np.ascontiguousarray(a[start : start + batch]) for n, a in inputs.items()}
        parts.append(np.asarray(runtime.run(feeds, [output])[output]))
    return np.concatenate(parts)


def _latency_ms(runtime: Runtime, feeds: dict[str, np.ndarray], outputs: list[str], options: EvalOptions) -> float:
    for _ in range(2):
        runtime.run(feeds, outputs)
    times: list[float] = []
    deadline = time.perf_counter() + options.latency_budget_s
    while len(times) < options.latency_runs and (len(times) < 5 or time.perf_counter() < deadline):
        start = time.perf_counter()
        runtime.run(feeds, outputs)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def _transfer_mb(path: Path) -> float:
    compressor = zlib.compressobj(1)
    size = 0
    with open(path, "rb") as fh:
        while block := fh.read(1 << 22):
            size += len(compressor.compress(block))
    return (size + len(compressor.flush())) / MiB


def _memory_subprocess(candidate: Candidate, batches: dict[str, dict[str, np.ndarray]], threads: int) -> float:
    assert candidate.path is not None
    feeds_path = candidate.path.with_suffix(".memprobe.npz")
    arrays: dict[str, Any] = {f"{b}/{n}": a for b, feeds in batches.items() for n, a in feeds.items()}
    np.savez(feeds_path, **arrays)
    try:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "edgefleet.compression.memprobe",
                candidate.model_format,
                str(candidate.path),
                str(feeds_path),
                str(threads),
            ],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    finally:
        feeds_path.unlink(missing_ok=True)
    if done.returncode != 0:
        raise RuntimeError(f"memory probe failed: {(done.stdout + done.stderr).strip()[-300:]}")
    return float(json.loads(done.stdout.strip().splitlines()[-1])["delta_mb"])


def _measure(
    candidate: Candidate,
    data: EvalData,
    metric: Metric,
    reference: tuple[np.ndarray, float] | None,
    output: str,
    options: EvalOptions,
) -> tuple[Measurement, np.ndarray]:
    assert candidate.path is not None
    rss_before = psutil.Process().memory_info().rss
    runtime, key = open_runtime_for(candidate, options.threads)
    mapping = feed_names(runtime, list(data.inputs))
    own_outputs = [s.name for s in runtime.outputs]
    out_name = output if output in own_outputs else own_outputs[0]
    outputs = run_rows(runtime, data.inputs, options.batch_n, out_name)
    ref_outputs, ref_metric = reference if reference is not None else (outputs, float("nan"))
    score = metric.score(outputs, data.labels, ref_outputs)
    if reference is None:
        ref_metric = score
    fixed = fixed_batch(runtime)
    n = fixed if fixed is not None else min(options.batch_n, data.rows)
    batches = {
        "b1": {mapping[k]: np.ascontiguousarray(a[:1]) for k, a in data.inputs.items()},
        "bn": {mapping[k]: np.ascontiguousarray(a[:n]) for k, a in data.inputs.items()},
    }
    latency_b1 = _latency_ms(runtime, batches["b1"], [out_name], options)
    latency_bn = _latency_ms(runtime, batches["bn"], [out_name], options)
    rss_after = psutil.Process().memory_info().rss
    del runtime
    notes = []
    if "gpu" in candidate.targets and "cpu" not in candidate.targets:
        notes.append("latency measured on the CPU here; the class runs it on a GPU")
    if fixed is not None:
        notes.append(f"fixed batch of {fixed}: batch-N latency is at batch {fixed}")
    if out_name != output:
        notes.append(f"output {output!r} is {out_name!r} in this candidate")
    peak: float | None = None
    method = options.memory
    if method == "subprocess":
        try:
            peak = _memory_subprocess(candidate, batches, options.threads)
        except (RuntimeError, subprocess.TimeoutExpired, ValueError) as exc:
            notes.append(f"memory probe failed ({exc}); in-process figure instead")
            method = "in-process"
    if method == "in-process":
        peak = max(rss_after - rss_before, 0) / MiB
    size = candidate.path.stat().st_size / MiB
    agreement = None
    if metric.name == "accuracy":
        agreement = float(
            np.mean(outputs.reshape(len(outputs), -1).argmax(1) == ref_outputs.reshape(len(ref_outputs), -1).argmax(1))
        )
    measured = Measurement(
        runtime=key,
        metric=score,
        drop=metric.drop(ref_metric, score),
        latency_ms_b1=latency_b1,
        latency_ms_bn=latency_bn,
        batch_n=n,
        size_mb=size,
        transfer_mb=_transfer_mb(candidate.path),
        cosine_to_reference=float(np.mean(cosine_rows(outputs, ref_outputs))),
        top1_agreement=agreement,
        peak_rss_mb=peak,
        memory_method=method if method != "off" else "off",
        notes=notes,
    )
    return measured, outputs


def evaluate_candidates(
    candidates: list[Candidate],
    data: EvalData,
    metric: Metric,
    output: str,
    options: EvalOptions,
    on_step: Callable[[Candidate], None] | None = None,
) -> np.ndarray:
    """Measure each built candidate in place; return the reference's outputs (the first candidate's).

    The first candidate must be the FP32 reference; its failure is raised, any other is recorded.
    """
    reference: tuple[np.ndarray, float] | None = None
    for i, candidate in enumerate(candidates):
        if candidate.status == "built" and candidate.model_format in ("onnx", "tflite"):
            try:
                candidate.measured, outputs = _measure(candidate, data, metric, reference, output, options)
                if reference is None:
                    reference = (outputs, candidate.measured.metric)
            except Exception as exc:
                if i == 0:
                    raise
                candidate.eval_error = f"{type(exc).__name__}: {str(exc).strip()[:300]}"
                log.warning("candidate %s could not be evaluated: %s", candidate.name, candidate.eval_error)
        if on_step is not None:
            on_step(candidate)
    if reference is None:
        raise RuntimeError("the reference candidate was not evaluated")
    return reference[0]
