"""Measure every built candidate on the runtime it will run on (the agent's ONNX Runtime CPU or LiteRT
backend): task metric and drop vs the reference on every scored output (``compression.outputs``; the
worst gates), median latency at batch 1 and batch N, size on disk, compressed transfer size, and peak
memory.

Memory is measured in a subprocess by default (``compression.memprobe``: a fresh interpreter loads
and runs the model, peak RSS minus RSS after imports); ``in-process`` is a cheaper best effort (RSS
growth of this process across load and run, blind to memory freed before it is read); ``off`` skips.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
import psutil

from edgefleet.agent.runtimes import Runtime, RuntimeOptions, backend, import_errors
from edgefleet.compression.candidates.base import Candidate, Measurement
from edgefleet.compression.data import EvalData
from edgefleet.compression.errors import CompressionError, ModelRunError
from edgefleet.compression.metrics import Metric
from edgefleet.compression.outputs import OutputPlan, OutputScore, plan_outputs, score_outputs, worst
from edgefleet.compression.timing import Latency, interleaved_latency

__all__ = [
    "EvalOptions",
    "evaluate_candidates",
    "feed_names",
    "fixed_batch",
    "open_runtime_for",
    "run_outputs",
    "run_rows",
]

log = logging.getLogger(__name__)

MiB = 1024 * 1024
MemoryMethod = Literal["subprocess", "in-process", "off"]


@dataclass
class EvalOptions:
    threads: int = 1  # intra-op threads while timing: one is steadier here and closest to a small board's core
    batch_n: int = 32
    latency_runs: int = 50  # per batch size and candidate, spread over the rounds
    latency_budget_s: float = 1.0  # per batch size and candidate
    memory: MemoryMethod = "subprocess"
    latency_rounds: int = 10  # interleaved rounds (compression.timing); at most latency_runs


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


def run_outputs(
    runtime: Runtime, inputs: dict[str, np.ndarray], batch: int, outputs: list[str]
) -> dict[str, np.ndarray]:
    """Outputs of ``runtime`` over all rows, in batches of ``batch`` (of its fixed batch, if it has one)."""
    mapping = feed_names(runtime, list(inputs))
    batch = fixed_batch(runtime) or batch
    rows = len(next(iter(inputs.values())))
    parts: dict[str, list[np.ndarray]] = {o: [] for o in outputs}
    for start in range(0, rows, batch):
        feeds = {mapping[n]: np.ascontiguousarray(a[start : start + batch]) for n, a in inputs.items()}
        got = runtime.run(feeds, outputs)
        for o in outputs:
            parts[o].append(np.asarray(got[o]))
    return {o: np.concatenate(p) for o, p in parts.items()}


def run_rows(runtime: Runtime, inputs: dict[str, np.ndarray], batch: int, output: str) -> np.ndarray:
    """One output of ``runtime`` over all rows (see ``run_outputs``)."""
    return run_outputs(runtime, inputs, batch, [output])[output]


def output_names(runtime: Runtime, reference: list[str], wanted: list[str]) -> dict[str, str]:
    """Reference output name -> the candidate's, for each of ``wanted`` (by name, else by position when
    a converter renamed them all)."""
    own = [s.name for s in runtime.outputs]
    if all(w in own for w in wanted):
        return {w: w for w in wanted}
    if len(own) != len(reference):
        raise RuntimeError(f"the candidate has outputs {own}; the reference {reference}")
    return {w: own[reference.index(w)] for w in wanted}


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


@dataclass
class _Scored:
    """A candidate whose outputs are scored, its runtime still open for the interleaved timing."""

    candidate: Candidate
    runtime: Runtime | None  # closed (None) before the memory probes
    key: str
    batches: dict[str, dict[str, np.ndarray]]  # b1 / bn feeds, by the candidate's own input names
    batch_n: int
    scores: dict[str, OutputScore]
    notes: list[str]
    rss_growth: int


def _score(
    candidate: Candidate,
    data: EvalData,
    metric: Metric,
    plan: OutputPlan | None,
    requested: list[str] | None,
    options: EvalOptions,
) -> tuple[_Scored, OutputPlan]:
    """Open and score one candidate; the first (``plan`` None) is the reference, whose outputs decide the plan."""
    assert candidate.path is not None
    rss_before = psutil.Process().memory_info().rss
    runtime, key = open_runtime_for(candidate, options.threads)
    mapping = feed_names(runtime, list(data.inputs))
    notes = []
    if plan is None:
        values = run_outputs(runtime, data.inputs, options.batch_n, [s.name for s in runtime.outputs])
        plan = plan_outputs(values, data.inputs, metric, data.labels, requested)
        scores = score_outputs(plan, values, data.labels, {})
        plan.reference_scores = scores
    else:
        own = output_names(runtime, plan.outputs, plan.scored)
        got = run_outputs(runtime, data.inputs, options.batch_n, list(own.values()))
        reference_scores = {n: s.score for n, s in plan.reference_scores.items()}
        scores = score_outputs(plan, {ref: got[name] for ref, name in own.items()}, data.labels, reference_scores)
        notes += [f"output {ref!r} is {name!r} in this candidate" for ref, name in own.items() if ref != name]
    fixed = fixed_batch(runtime)
    n = fixed if fixed is not None else min(options.batch_n, data.rows)
    batches = {
        "b1": {mapping[k]: np.ascontiguousarray(a[:1]) for k, a in data.inputs.items()},
        "bn": {mapping[k]: np.ascontiguousarray(a[:n]) for k, a in data.inputs.items()},
    }
    every = [s.name for s in runtime.outputs]  # timed as the device runs it: all outputs
    for feeds in batches.values():
        runtime.run(feeds, every)  # a batch the timing would fail on fails here, with the others' scores
    if "gpu" in candidate.targets and "cpu" not in candidate.targets:
        notes.append("latency measured on the CPU here; the class runs it on a GPU")
    if fixed is not None:
        notes.append(f"fixed batch of {fixed}: batch-N latency is at batch {fixed}")
    growth = psutil.Process().memory_info().rss - rss_before
    return _Scored(candidate, runtime, key, batches, n, scores, notes, growth), plan


def _time(scored: list[_Scored], options: EvalOptions) -> dict[str, dict[str, Latency]]:
    """Batch size ("b1", "bn") -> candidate name -> latency, every candidate timed in the same rounds."""
    rounds = max(1, min(options.latency_rounds, options.latency_runs))
    per_round = max(1, -(-options.latency_runs // rounds))
    result = {}
    for batch in ("b1", "bn"):
        runners = {}
        for s in scored:
            assert s.runtime is not None
            every = [o.name for o in s.runtime.outputs]
            runners[s.candidate.name] = partial(s.runtime.run, s.batches[batch], every)
        result[batch] = interleaved_latency(
            runners, rounds=rounds, runs_per_round=per_round, budget_s=options.latency_budget_s
        )
    return result


def _measurement(s: _Scored, b1: Latency, bn: Latency, options: EvalOptions) -> Measurement:
    candidate, notes = s.candidate, list(s.notes)
    assert candidate.path is not None
    peak: float | None = None
    method = options.memory
    if method == "subprocess":
        try:
            peak = _memory_subprocess(candidate, s.batches, options.threads)
        except (RuntimeError, subprocess.TimeoutExpired, ValueError) as exc:
            notes.append(f"memory probe failed ({exc}); in-process figure instead")
            method = "in-process"
    if method == "in-process":
        peak = max(s.rss_growth, 0) / MiB
    gating, gate = worst(s.scores)
    agreements = [o.top1_agreement for o in s.scores.values() if o.top1_agreement is not None]
    return Measurement(
        runtime=s.key,
        metric=gate.score,
        drop=gate.drop,
        latency_ms_b1=b1.median_ms,
        latency_ms_bn=bn.median_ms,
        batch_n=s.batch_n,
        size_mb=candidate.path.stat().st_size / MiB,
        transfer_mb=_transfer_mb(candidate.path),
        cosine_to_reference=min(o.cosine_to_reference for o in s.scores.values()),
        top1_agreement=min(agreements) if agreements else None,
        peak_rss_mb=peak,
        memory_method=method if method != "off" else "off",
        notes=notes,
        outputs=s.scores,
        gating_output=gating,
        latency_b1=b1,
        latency_bn=bn,
    )


def evaluate_candidates(
    candidates: list[Candidate],
    data: EvalData,
    metric: Metric,
    outputs: str | list[str] | None,
    options: EvalOptions,
    on_step: Callable[[Candidate], None] | None = None,
) -> OutputPlan:
    """Measure each built candidate in place; return what was scored, with the reference's values.

    ``outputs``: the outputs to score (None: every one). Every candidate is scored first, then all
    are timed together in interleaved rounds (``compression.timing``), then their memory is probed.
    The first candidate must be the FP32 reference; its failure is raised (``ModelRunError``), any
    other is recorded on the candidate.
    """
    requested = [outputs] if isinstance(outputs, str) else outputs
    plan: OutputPlan | None = None
    scored: list[_Scored] = []
    for i, candidate in enumerate(candidates):
        if candidate.status == "built" and candidate.model_format in ("onnx", "tflite"):
            try:
                entry, plan = _score(candidate, data, metric, plan, requested, options)
                scored.append(entry)
            except CompressionError:
                raise  # the outputs asked for, or the labels, do not fit the model
            except Exception as exc:
                if i == 0:
                    text = str(exc).strip()
                    raise ModelRunError(
                        f"the reference model fails on the validation data: {type(exc).__name__}: "
                        f"{text.splitlines()[0][:400] if text else ''}"
                    ) from exc
                candidate.eval_error = f"{type(exc).__name__}: {str(exc).strip()[:300]}"
                log.warning("candidate %s could not be evaluated: %s", candidate.name, candidate.eval_error)
        if on_step is not None:
            on_step(candidate)
    if plan is None:
        raise RuntimeError("the reference candidate was not evaluated")
    latency = _time(scored, options)
    for entry in scored:
        entry.runtime = None  # free the sessions before the memory probes
    for entry in scored:
        name = entry.candidate.name
        entry.candidate.measured = _measurement(entry, latency["b1"][name], latency["bn"][name], options)
    return plan
