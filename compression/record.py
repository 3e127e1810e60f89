"""What a compression run has found so far, so that its report can be written at any point it stops."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgefleet.common.errors import EdgefleetError
from edgefleet.compression.candidates.base import Candidate
from edgefleet.compression.outputs import OutputPlan
from edgefleet.compression.report import CompressionReport
from edgefleet.compression.selection import ClassSelection
from edgefleet.compression.source import ReferenceModel

__all__ = ["RunRecord"]


@dataclass
class RunRecord:
    """Filled in stage by stage by ``compression.pipeline``; ``report()`` turns it into the report."""

    name: str
    version: str
    metric: str
    out_dir: Path
    stage: str = "starting"
    reference: ReferenceModel | None = None
    rows: int | None = None
    candidates: list[Candidate] = field(default_factory=list)
    selections: list[ClassSelection] = field(default_factory=list)
    plan: OutputPlan | None = None
    notes: list[str] = field(default_factory=list)
    stopped: dict[str, str] | None = None

    def stop(self, exc: BaseException) -> None:
        """Record why the run stopped, at the stage it had reached."""
        if isinstance(exc, KeyboardInterrupt):
            reason = "interrupted"
        elif isinstance(exc, EdgefleetError):
            reason = exc.reason
        else:
            reason = str(exc).strip().splitlines()[0][:500] if str(exc).strip() else type(exc).__name__
        self.stopped = {"stage": self.stage, "error": type(exc).__name__, "reason": reason}

    def _reference(self) -> dict[str, Any]:
        if self.reference is None:
            return {}
        ref = self.reference
        measured = self.candidates[0].measured if self.candidates else None
        summary: dict[str, Any] = {
            "origin": ref.origin,
            "digest": ref.digest,
            "precision": ref.precision,
            "quantized": ref.quantized,
            "inputs": [i.model_dump() for i in ref.inputs],
            "outputs": [o.model_dump() for o in ref.outputs],
            "metric": measured.metric if measured is not None else None,
            "rows": self.rows,
            "export_max_error": ref.export_max_error,
        }
        if self.plan is not None:
            summary["scored_outputs"] = self.plan.scored
            summary["output_metrics"] = self.plan.metric_of
            summary["passthrough_outputs"] = self.plan.passthrough
        return summary

    def report(self) -> CompressionReport:
        return CompressionReport(
            name=self.name,
            version=self.version,
            metric=self.metric,
            reference=self._reference(),
            candidates=self.candidates,
            selections=self.selections,
            out_dir=self.out_dir,
            notes=list(self.notes),
            stopped=self.stopped,
        )
