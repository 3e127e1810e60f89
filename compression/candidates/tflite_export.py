"""TFLite export through a separate Python environment that has ``litert-torch`` (it conflicts with flwr).

The reference module is saved as a ``torch.export`` program with its example rows, and
``compression/candidates/tflite_worker.py`` converts it with the export environment's Python (one run for every
variant, with a timeout), and the .tflite files come back to be measured on LiteRT here like any
candidate. ``scripts/make_tflite_env.sh`` creates the environment; ``--tflite-python`` (or
``EDGEFLEET_TFLITE_PYTHON``) names its Python.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

__all__ = ["WORKER", "EnvExport", "TfliteEnvError", "probe_env"]

log = logging.getLogger(__name__)

WORKER = Path(__file__).resolve().parent / "tflite_worker.py"
PROBE_TIMEOUT_S = 60.0

# Run by the export environment's Python: what it has, as one JSON line, without importing litert_torch.
_PROBE = """
import importlib.metadata as m, json, sys
def v(p):
    try:
        return m.version(p)
    except m.PackageNotFoundError:
        return None
print(json.dumps({"python": sys.version.split()[0], "litert-torch": v("litert-torch"), "torch": v("torch")}))
"""


class TfliteEnvError(RuntimeError):
    """The export environment is unusable or its worker failed; the message is one line, for the report."""

    def __init__(self, python: str, detail: str) -> None:
        super().__init__(f"tflite export env {python} failed: {detail}")
        self.python = python
        self.detail = detail


def _tail(text: str, lines: int = 3, chars: int = 400) -> str:
    kept = [line.strip() for line in text.strip().splitlines() if line.strip()][-lines:]
    return " | ".join(kept)[-chars:] or "no output"


def _minor(version: str | None) -> str:
    return ".".join((version or "").split("+")[0].split(".")[:2])


def probe_env(python: str) -> dict[str, str]:
    """The versions in the export environment; raises ``TfliteEnvError`` saying why it cannot export."""
    import torch

    if shutil.which(python) is None:
        raise TfliteEnvError(python, "no such executable")
    try:
        done = subprocess.run(
            [python, "-P", "-c", _PROBE], capture_output=True, text=True, timeout=PROBE_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise TfliteEnvError(python, f"{type(exc).__name__}: {exc}") from None
    if done.returncode != 0:
        raise TfliteEnvError(python, f"exit {done.returncode}: {_tail(done.stderr + done.stdout)}")
    try:
        found = json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise TfliteEnvError(python, f"unexpected probe output: {_tail(done.stdout)}") from None
    if not found.get("litert-torch"):
        raise TfliteEnvError(python, "litert-torch is not installed there (scripts/make_tflite_env.sh makes one)")
    if _minor(found.get("torch")) != _minor(torch.__version__):
        raise TfliteEnvError(
            python,
            f"it has torch {found.get('torch')}, this environment {torch.__version__}; a torch.export program "
            "needs the same torch minor version on both sides",
        )
    return {k: str(v) for k, v in found.items()}


def _save_rows(path: Path, arrays: list[np.ndarray]) -> Path:
    named: dict[str, Any] = {f"in_{i}": np.ascontiguousarray(a) for i, a in enumerate(arrays)}
    np.savez(path, **named)
    return path


@dataclass
class EnvExport:
    """One worker run in the export environment for every variant, started by the first ``make``.

    ``samples`` fix the converted model's input shapes (litert-torch converts fixed shapes only).
    """

    python: str
    module: torch.nn.Module
    samples: list[np.ndarray]
    workdir: Path
    variants: list[str]
    timeout_s: float = 600.0
    _results: dict[str, dict[str, object]] | None = field(default=None, init=False, repr=False)

    def make(self, variant: str, out: Path) -> None:
        """Write ``variant``'s .tflite to ``out``; raises ``TfliteEnvError`` with the worker's reason."""
        if self._results is None:
            self._results = self._run()
        result = self._results.get(variant)
        if result is None:
            raise TfliteEnvError(self.python, f"the worker reported nothing for {variant}")
        if "error" in result:
            raise TfliteEnvError(self.python, f"{variant}: {result['error']}")
        shutil.copyfile(str(result["path"]), out)

    def _run(self) -> dict[str, dict[str, object]]:
        import torch

        self.workdir.mkdir(parents=True, exist_ok=True)
        program = self.workdir / "reference.pt2"
        tensors = tuple(torch.from_numpy(a) for a in self.samples)
        try:
            torch.export.save(torch.export.export(self.module.eval(), tensors), str(program))
        except Exception as exc:
            first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
            raise RuntimeError(f"torch.export of the model failed: {type(exc).__name__}: {first}") from None
        result = self.workdir / "result.json"
        result.unlink(missing_ok=True)
        command = [
            self.python,
            "-P",  # the worker's folder (compression/) must not shadow the environment's packages
            str(WORKER),
            "--program",
            str(program),
            "--samples",
            str(_save_rows(self.workdir / "samples.npz", self.samples)),
            "--out-dir",
            str(self.workdir),
            "--variants",
            ",".join(self.variants),
            "--result",
            str(result),
        ]
        log.info("tflite export: %s", " ".join(command))
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=self.timeout_s, check=False)
        except subprocess.TimeoutExpired:
            raise TfliteEnvError(self.python, f"timed out after {self.timeout_s:g} s") from None
        except OSError as exc:
            raise TfliteEnvError(self.python, f"{type(exc).__name__}: {exc}") from None
        (self.workdir / "worker.log").write_text(done.stdout + done.stderr)
        if done.returncode != 0 or not result.is_file():
            raise TfliteEnvError(self.python, f"exit {done.returncode}: {_tail(done.stderr + done.stdout)}")
        outcome: dict[str, dict[str, object]] = json.loads(result.read_text())["results"]
        for variant, entry in outcome.items():
            if "error" in entry:
                log.warning("tflite export of %s failed in %s: %s", variant, self.python, entry["error"])
        return outcome
