"""The compression report: a rich table for the terminal, JSON, and Markdown."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from edgefleet.compression.candidates.base import Candidate
from edgefleet.compression.selection import ClassSelection
from edgefleet.compression.timing import Latency

__all__ = ["CompressionReport"]


def _latency(median: float, interval: Latency | None) -> str:
    if interval is None:
        return f"{median:.3f}"
    return f"{median:.3f} [{interval.low_ms:.3f}-{interval.high_ms:.3f}]"


@dataclass
class CompressionReport:
    name: str
    version: str
    metric: str
    reference: dict[str, Any]
    candidates: list[Candidate]
    selections: list[ClassSelection]
    out_dir: Path
    notes: list[str] = field(default_factory=list)
    stopped: dict[str, str] | None = None  # stage, error, reason: why the run did not finish

    @property
    def unmet(self) -> list[ClassSelection]:
        return [s for s in self.selections if s.chosen is None]

    def candidate(self, name: str) -> Candidate:
        return next(c for c in self.candidates if c.name == name)

    def to_dict(self) -> dict[str, Any]:
        rows = []
        for c in self.candidates:
            m = c.measured
            rows.append(
                {
                    "name": c.name,
                    "technique": c.technique,
                    "precision": c.precision,
                    "format": c.model_format,
                    "targets": sorted(c.targets),
                    "status": c.status if c.eval_error is None else "built, not evaluated",
                    "reason": c.reason or c.eval_error,
                    "params": c.params,
                    "tool": c.tool,
                    "path": str(c.path) if c.path else None,
                    "build_s": round(c.build_s, 3),
                    "sha256": c.sha256,
                    "same_files": c.same_files,
                    "measured": None
                    if m is None
                    else {
                        "runtime": m.runtime,
                        "metric": m.metric,
                        "drop": m.drop,
                        "latency_ms_b1": m.latency_ms_b1,
                        "latency_ms_bn": m.latency_ms_bn,
                        "batch_n": m.batch_n,
                        "size_mb": m.size_mb,
                        "transfer_mb": m.transfer_mb,
                        "cosine_to_reference": m.cosine_to_reference,
                        "top1_agreement": m.top1_agreement,
                        "peak_rss_mb": m.peak_rss_mb,
                        "memory_method": m.memory_method,
                        "notes": m.notes,
                        "gating_output": m.gating_output,
                        "latency_b1": None if m.latency_b1 is None else asdict(m.latency_b1),
                        "latency_bn": None if m.latency_bn is None else asdict(m.latency_bn),
                        "outputs": {name: asdict(score) for name, score in m.outputs.items()},
                    },
                }
            )
        return {
            "name": self.name,
            "version": self.version,
            "outcome": "complete" if self.stopped is None else "stopped",
            "stopped": self.stopped,
            "metric": self.metric,
            "reference": self.reference,
            "candidates": rows,
            "selections": [
                {
                    "device_class": s.device_class,
                    "hardware": s.hardware,
                    "chosen": s.chosen,
                    "reason": s.reason,
                    "bundle": s.bundle,
                    "digest": s.digest,
                    "batching": s.batching,
                    "rejected": s.rejected,
                }
                for s in self.selections
            ],
            "notes": self.notes,
        }

    def write(self) -> tuple[Path, Path]:
        """Write report.json and report.md into the output folder."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        json_path, md_path = self.out_dir / "report.json", self.out_dir / "report.md"
        json_path.write_text(json.dumps(self.to_dict(), indent=2, default=str) + "\n")
        md_path.write_text(self.markdown())
        return json_path, md_path

    def _cells(self, c: Candidate) -> list[str]:
        m = c.measured
        if m is None:
            status = c.status if c.eval_error is None else "not evaluated"
            return [
                c.name,
                c.precision,
                c.model_format,
                "-",
                "-",
                "-",
                "-",
                "-",
                "-",
                f"{status}: {c.reason or c.eval_error}",
            ]
        peak = "-" if m.peak_rss_mb is None else f"{m.peak_rss_mb:.1f}"
        notes = list(m.notes)
        if len(m.outputs) > 1:
            notes.insert(
                0, ", ".join(f"{o} {s.score:.4f}" for o, s in m.outputs.items()) + f" (gate: {m.gating_output})"
            )
        if c.same_files:
            notes.append(f"same file as {', '.join(c.same_files)}")
        return [
            c.name,
            c.precision,
            c.model_format,
            f"{m.metric:.4f}",
            f"{m.drop:+.4f}",
            _latency(m.latency_ms_b1, m.latency_b1),
            _latency(m.latency_ms_bn, m.latency_bn),
            f"{m.size_mb:.3f}",
            peak,
            "; ".join(notes) or "ok",
        ]

    def _headers(self) -> list[str]:
        n = next((c.measured.batch_n for c in self.candidates if c.measured), 0)
        return [
            "candidate",
            "precision",
            "format",
            self.metric,
            "drop",
            "ms b1",
            f"ms b{n}",
            "size MB",
            "peak MB",
            "status",
        ]

    def markdown(self) -> str:
        ref = self.reference
        lines = [f"# Compression report: {self.name} {self.version}", ""]
        if self.stopped is not None:
            lines += [
                f"**Stopped** while {self.stopped['stage']}: {self.stopped['error']}: {self.stopped['reason']}",
                "",
                "What was measured before it stopped is below.",
                "",
            ]
        if ref:
            value = ref.get("metric")
            shown = f"{value:.4f}" if isinstance(value, float) else "not measured"
            lines += [
                f"Reference: {ref['origin']} (sha256 {ref['digest'][:16]}..., {ref.get('precision', 'fp32')}), "
                f"metric **{self.metric}** = {shown} on {ref.get('rows', '?')} validation rows.",
                "",
            ]
            if ref.get("scored_outputs"):
                scored = ", ".join(f"{o} ({ref['output_metrics'][o]})" for o in ref["scored_outputs"])
                lines += [f"Scored outputs: {scored}; the worst one gates.", ""]
        lines += [
            "| " + " | ".join(self._headers()) + " |",
            "|" + "---|" * len(self._headers()),
        ]
        lines += ["| " + " | ".join(cell.replace("|", "/") for cell in self._cells(c)) + " |" for c in self.candidates]
        lines += [
            "",
            "## Per device class",
            "",
            "| class | hardware | chosen | why | bundle | batching |",
            "|---|---|---|---|---|---|",
        ]
        for s in self.selections:
            lines.append(
                f"| {s.device_class} | {s.hardware} | {s.chosen or '-'} | {s.reason} | {s.bundle or '-'} "
                f"| {(s.batching or '-').replace('|', '/')} |"
            )
        if self.notes:
            lines += ["", "## Notes", ""] + [f"- {note}" for note in self.notes]
        memory = {c.measured.memory_method for c in self.candidates if c.measured}
        lines += [
            "",
            f"Peak memory: {', '.join(sorted(memory)) or 'not measured'}. Latency (ms): the median of "
            "interleaved rounds here, every candidate timed in each round, with the confidence interval "
            "of the median in brackets; one candidate is faster than another only when the intervals "
            "do not overlap.",
        ]
        return "\n".join(lines) + "\n"

    def print_table(self, console: Console) -> None:
        table = Table(*self._headers(), title=f"{self.name} {self.version}: candidates")
        for c in self.candidates:
            style = None if c.measured else "dim"
            table.add_row(*(escape(cell) for cell in self._cells(c)), style=style)
        console.print(table)
        classes = Table("class", "hardware", "chosen", "why", "bundle", "batching", title="selection per device class")
        for s in self.selections:
            chosen = escape(s.chosen) if s.chosen else "[red]none[/red]"
            classes.add_row(
                s.device_class, s.hardware, chosen, escape(s.reason), escape(s.bundle or "-"), escape(s.batching or "-")
            )
        console.print(classes)
        for note in self.notes:
            console.print(f"note: {escape(note)}")
