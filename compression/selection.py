"""Choose one candidate per device class against the class's ``[selection]`` constraints.

Rules, in order:

1. A candidate must be built and measured, in one of the class's ``formats``, and meant for the
   class's hardware: a *GPU class* (``preferred_precision = "fp16"``, or a chain that starts with a
   TensorRT runtime) takes candidates made for GPUs (FP32, FP16); a CPU class takes those made for CPUs
   (FP32, INT8, ORT-optimised). TensorRT engines are never shipped (the agent builds its own).
2. It must meet ``max_metric_drop``, ``max_size_mb`` and, where set, ``max_latency_ms`` (median
   batch-1 latency measured here; not checked for GPU classes, whose latency is not measured here).
3. Among those, the fastest wins: a candidate is slower than the fastest only when their batch-1
   latency intervals (interleaved rounds, ``compression.timing``) do not overlap; all that are not
   slower tie (without intervals: latencies within ``tie``, 5%, of the fastest), broken by the class's
   ``preferred_precision`` (a preference, not a requirement), then the smaller file.
   For GPU classes, with no GPU latency to rank by, preferred precision then size decide.

When nothing qualifies, the result says which constraint stopped the closest candidate:
"no candidate meets max_metric_drop 0.01 for rpi4; best was int8-dynamic with drop 0.023".
"""

from __future__ import annotations

from dataclasses import dataclass, field

from edgefleet.agent.device_class import DeviceClass
from edgefleet.compression.candidates.base import Candidate

__all__ = ["ClassSelection", "class_hardware", "select_candidate"]

GPU_FIRST = ("tensorrt", "onnxruntime-tensorrt")


@dataclass
class ClassSelection:
    device_class: str
    chosen: str | None
    reason: str  # why the chosen one won, or the "no candidate meets ..." message
    hardware: str
    rejected: dict[str, str] = field(default_factory=dict)  # candidate name -> why not
    bundle: str | None = None
    digest: str | None = None
    batching: str | None = None  # what the bundle declares: "up to N" rows, or "off: why"


def class_hardware(device_class: DeviceClass) -> str:
    runtime = device_class.runtime
    return "gpu" if runtime.preferred_precision == "fp16" or runtime.chain[0] in GPU_FIRST else "cpu"


def _violations(candidate: Candidate, device_class: DeviceClass, hardware: str) -> list[tuple[str, float, str]]:
    """(constraint, how far over the limit as a ratio, wording) for each limit the candidate breaks."""
    m = candidate.measured
    assert m is not None
    limits = device_class.selection
    found = []
    if m.drop > limits.max_metric_drop:
        excess = (m.drop - limits.max_metric_drop) / max(limits.max_metric_drop, 1e-9)
        found.append(("max_metric_drop", excess, f"drop {m.drop:.4g} > {limits.max_metric_drop:g}"))
    if m.size_mb > limits.max_size_mb:
        found.append(
            ("max_size_mb", m.size_mb / limits.max_size_mb - 1, f"size {m.size_mb:.3g} MB > {limits.max_size_mb:g}")
        )
    if hardware == "cpu" and limits.max_latency_ms is not None and m.latency_ms_b1 > limits.max_latency_ms:
        found.append(
            (
                "max_latency_ms",
                m.latency_ms_b1 / limits.max_latency_ms - 1,
                f"latency {m.latency_ms_b1:.3g} ms > {limits.max_latency_ms:g}",
            )
        )
    return found


def _limit_text(constraint: str, device_class: DeviceClass) -> str:
    return f"{constraint} {getattr(device_class.selection, constraint):g}"


def _fastest(passing: list[Candidate], tie: float) -> tuple[list[Candidate], str]:
    """The candidates no other is measurably faster than the fastest of, and the wording of why."""

    def latency(c: Candidate) -> float:
        assert c.measured is not None
        return c.measured.latency_ms_b1

    best = min(passing, key=latency)
    intervals = [c.measured.latency_b1 for c in passing if c.measured is not None]
    interval = best.measured.latency_b1 if best.measured is not None else None
    if interval is not None and all(i is not None for i in intervals):
        tied = [
            c
            for c in passing
            if c.measured is not None
            and c.measured.latency_b1 is not None
            and not c.measured.latency_b1.low_ms > interval.high_ms
        ]
        basis = (
            f"fastest within constraints ({interval.median_ms:.3g} ms at batch 1, "
            f"{interval.coverage:.0%} interval {interval.low_ms:.3g}-{interval.high_ms:.3g}"
        )
        if len(tied) > 1:
            basis += f"; {len(tied)} not separated from it, then preferred precision, then smallest"
        return tied, basis + ")"
    fastest = latency(best)
    tied = [c for c in passing if latency(c) <= fastest * (1 + tie)]
    basis = f"fastest within constraints ({fastest:.3g} ms at batch 1"
    basis += f"; {len(tied)} within {tie:.0%}, then preferred precision, then smallest)" if len(tied) > 1 else ")"
    return tied, basis


def select_candidate(candidates: list[Candidate], device_class: DeviceClass, *, tie: float = 0.05) -> ClassSelection:
    hardware = class_hardware(device_class)
    name = device_class.name
    formats = device_class.selection.formats
    preferred = device_class.runtime.preferred_precision
    rejected: dict[str, str] = {}
    compatible: list[Candidate] = []
    for c in candidates:
        if c.model_format not in formats:
            rejected[c.name] = f"format {c.model_format} not in {formats}"
        elif c.status != "built":
            rejected[c.name] = f"{c.status}: {c.reason}"
        elif c.measured is None:
            rejected[c.name] = f"not evaluated: {c.eval_error}"
        elif hardware not in c.targets:
            rejected[c.name] = f"made for {'/'.join(sorted(c.targets))}, the class runs on {hardware}"
        else:
            compatible.append(c)
    if not compatible:
        return ClassSelection(
            name, None, f"no candidate in formats {formats} for {hardware} can run on {name}", hardware, rejected
        )
    passing = []
    broken: dict[str, list[tuple[str, float, str]]] = {}
    for c in compatible:
        violations = _violations(c, device_class, hardware)
        if violations:
            broken[c.name] = violations
            rejected[c.name] = "; ".join(v[2] for v in violations)
        else:
            passing.append(c)
    if not passing:
        best = min(compatible, key=lambda c: (len(broken[c.name]), sum(v[1] for v in broken[c.name])))
        limits = ", ".join(_limit_text(v[0], device_class) for v in broken[best.name])
        details = ", ".join(v[2].split(" > ")[0] for v in broken[best.name])
        message = f"no candidate meets {limits} for {name}; best was {best.name} with {details}"
        return ClassSelection(name, None, message, hardware, rejected)

    def measured(c: Candidate) -> tuple[float, float]:
        assert c.measured is not None
        return c.measured.latency_ms_b1, c.measured.size_mb

    if hardware == "gpu":
        tied = passing
        basis = "GPU class (latency not measured here): preferred precision, then smallest"
    else:
        tied, basis = _fastest(passing, tie)
    chosen = min(tied, key=lambda c: (c.precision != preferred, measured(c)[1], measured(c)[0]))
    for c in passing:
        if c is not chosen:
            rejected[c.name] = "meets the constraints; not chosen"
    return ClassSelection(name, chosen.name, basis, hardware, rejected)
