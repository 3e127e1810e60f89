"""What a candidate is, the context its builder gets, and the registry of techniques.

A *technique* (``@technique("int8-dynamic")``) plans one or more candidates for a reference model.
Each planned candidate carries either a ``make`` function that writes its model file, or the reason
it cannot be built here. The runner (``compression.candidates.build_candidates``) calls ``make``
and records any exception on the candidate, so one failing technique never stops the others.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from edgefleet.compression.data import EvalData
from edgefleet.compression.metrics import Metric
from edgefleet.compression.outputs import OutputScore
from edgefleet.compression.source import ReferenceModel
from edgefleet.compression.timing import Latency

__all__ = [
    "TECHNIQUES",
    "BuildContext",
    "BuildOptions",
    "Candidate",
    "Measurement",
    "Param",
    "Technique",
    "already_quantized",
    "not_built",
    "technique",
    "tool_version",
]

Param = str | int | float | bool | list[float] | list[int] | list[str]
# "duplicate": byte-identical to an earlier candidate (measured once, there); "rejected": screened out
# after building (larger than its source) and not measured.
Status = Literal["planned", "built", "failed", "not built", "duplicate", "rejected"]
Hardware = Literal["cpu", "gpu"]

EXTENSIONS = {"onnx": ".onnx", "tflite": ".tflite", "engine": ".engine"}


@dataclass
class Measurement:
    """What evaluation found, on the runtime the candidate will run on.

    ``metric`` and ``drop`` are the gating output's (the worst of ``outputs``, each scored on its own);
    ``cosine_to_reference`` and ``top1_agreement`` the lowest over the scored outputs.
    """

    runtime: str
    metric: float
    drop: float
    latency_ms_b1: float
    latency_ms_bn: float
    batch_n: int
    size_mb: float
    transfer_mb: float  # zlib-compressed: what travels to the device in chunks
    cosine_to_reference: float
    top1_agreement: float | None = None
    peak_rss_mb: float | None = None
    memory_method: str = "off"
    notes: list[str] = field(default_factory=list)
    outputs: dict[str, OutputScore] = field(default_factory=dict)
    gating_output: str | None = None
    latency_b1: Latency | None = None  # median and interval of the interleaved rounds (compression.timing)
    latency_bn: Latency | None = None


@dataclass
class Candidate:
    name: str  # unique in a run, e.g. int8-dynamic-pc
    technique: str  # the Recipe technique: fp32, int8-dynamic, int8-static, fp16, pruned, distilled, tflite, tensorrt
    precision: Literal["fp32", "fp16", "int8"]
    model_format: Literal["onnx", "tflite", "engine"]
    targets: frozenset[Hardware]  # hardware it is meant for; fp16 is for GPUs, dynamic INT8 for CPUs
    params: dict[str, Param] = field(default_factory=dict)
    tool: str | None = None
    make: Callable[[Path], None] | None = None
    status: Status = "planned"
    reason: str | None = None  # the error, or why it is not built here
    path: Path | None = None
    build_s: float = 0.0
    measured: Measurement | None = None
    eval_error: str | None = None
    sha256: str | None = None  # of the built file
    same_files: list[str] = field(default_factory=list)  # later candidates whose recipes gave this very file

    @property
    def filename(self) -> str:
        return self.name + EXTENSIONS[self.model_format]

    @property
    def usable(self) -> bool:
        return self.status == "built" and self.measured is not None


def not_built(name: str, technique: str, precision: str, model_format: str, reason: str, **kw: object) -> Candidate:
    """A candidate listed in the report with the reason it cannot be built here."""
    candidate = Candidate(name, technique, precision, model_format, frozenset(), **kw)  # type: ignore[arg-type]
    candidate.status = "not built"
    candidate.reason = reason
    return candidate


def already_quantized(ctx: BuildContext, names: list[str], technique: str, precision: str) -> list[Candidate] | None:
    """``not built`` entries when the reference is already quantized (quantizing twice is no recipe), else None."""
    if ctx.reference.quantized is None:
        return None
    reason = f"the input model is already quantized ({ctx.reference.quantized})"
    return [not_built(name, technique, precision, "onnx", reason) for name in names]


@dataclass
class BuildOptions:
    """Settings of the techniques; each has a default a user rarely needs to change."""

    dynamic_variants: list[str] = field(default_factory=lambda: ["per-tensor", "per-channel", "per-channel-rr"])
    static_per_channel: bool = True
    calibration_rows: int = 256
    prune_unstructured: list[float] = field(default_factory=lambda: [0.5])
    prune_structured: list[float] = field(default_factory=lambda: [0.25])
    finetune_epochs: int = 3
    student: str | None = None  # factory import path pkg.module:fn of the distillation student
    distill_epochs: int = 30
    temperature: float = 4.0
    alpha: float = 0.5  # weight of the label loss against the soft-target loss
    learning_rate: float = 3e-3
    batch_size: int = 64
    seed: int = 0
    opset: int = 17
    allow_larger: bool = False  # keep a candidate whose file is larger than its source's
    tflite_python: str | None = None  # Python of a separate environment with litert-torch (make_tflite_env.sh)
    tflite_timeout_s: float = 600.0  # for the whole TFLite export in that environment


@dataclass
class BuildContext:
    workdir: Path
    reference: ReferenceModel
    data: EvalData
    metric: Metric
    options: BuildOptions

    @property
    def scratch(self) -> Path:
        """Intermediate files (quantizer inputs and the like), beside the candidates."""
        path = self.workdir / "work"
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def temp(self) -> Path:
        """Where tools that write to their current directory run (as child processes); removed after the run."""
        path = self.workdir / "work" / "tmp"
        path.mkdir(parents=True, exist_ok=True)
        return path


Technique = Callable[[BuildContext], list[Candidate]]
TECHNIQUES: dict[str, Technique] = {}


def technique(key: str) -> Callable[[Technique], Technique]:
    """Register a technique under ``key`` (the name users pass to ``--techniques``)."""

    def wrap(fn: Technique) -> Technique:
        if key in TECHNIQUES:
            raise ValueError(f"technique {key!r} registered twice")
        TECHNIQUES[key] = fn
        return fn

    return wrap


def tool_version(*packages: str) -> str:
    parts = []
    for package in packages:
        try:
            parts.append(f"{package} {importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            parts.append(package)
    return ", ".join(parts)
