"""The compression API: from a reference model and data to measured candidates, a choice per device
class, signed bundles and a report.

    from edgefleet.compression import compress
    report = compress("pkg.models:make_net", "val.npz", metric="accuracy", out_dir=Path("out"),
                      name="digits", version="1.1.0", private_key=load_private_key(Path("keys/signing.key")))
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from edgefleet.agent.device_class import DeviceClass, load_device_class
from edgefleet.compression.bundles import BundleSpec, write_bundle
from edgefleet.compression.candidates import BuildContext, BuildOptions, Candidate, build_candidates, plan_candidates
from edgefleet.compression.data import EvalData, data_from_mapping, input_names_in, load_data
from edgefleet.compression.errors import DataError
from edgefleet.compression.evaluate import EvalOptions, evaluate_candidates
from edgefleet.compression.metrics import get_metric
from edgefleet.compression.report import CompressionReport
from edgefleet.compression.selection import select_candidate
from edgefleet.compression.source import ReferenceModel, load_reference
from edgefleet.compression.stats import confidence_stats, input_stats
from edgefleet.firmware_configs import CONFIG_DIR
from edgefleet.protocol.model_card import PreprocessingStep

if TYPE_CHECKING:
    import torch

__all__ = ["Example", "compress", "shipped_device_classes"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Example:
    """An example input for exporting a PyTorch model when the data should not provide it."""

    shape: tuple[int, ...]
    dtype: str = "float32"
    name: str = "input"


def shipped_device_classes(directory: Path = CONFIG_DIR) -> list[str]:
    return sorted(p.stem for p in directory.glob("*.toml"))


def _example_rows(raw: Mapping[str, np.ndarray] | EvalData, example: Example | None) -> dict[str, np.ndarray]:
    if example is not None:
        return {example.name: np.zeros(example.shape, dtype=example.dtype)}
    if isinstance(raw, EvalData):
        arrays = dict(raw.inputs)
    else:
        names = input_names_in(raw)
        if names is not None:
            arrays = {n: np.asarray(raw[f"x.{n}"]) for n in names}
        elif "x" in raw:
            arrays = {"input": np.asarray(raw["x"])}
        else:
            raise DataError("no validation inputs: the data needs 'x' (or 'x.<input name>' per input)")
    # float64 from numpy is almost never what a float32 model wants.
    return {n: (a.astype(np.float32) if a.dtype == np.float64 else a)[:2] for n, a in arrays.items()}


@contextmanager
def _progress(enabled: bool) -> Iterator[Progress | None]:
    if not enabled:
        yield None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        yield progress


def compress(
    model: str | Path | torch.nn.Module,
    data: str | Path | Mapping[str, np.ndarray] | EvalData,
    *,
    metric: str,
    out_dir: Path,
    name: str,
    version: str,
    private_key: Ed25519PrivateKey | None = None,
    device_classes: list[str] | None = None,
    techniques: list[str] | None = None,
    build: BuildOptions | None = None,
    evaluation: EvalOptions | None = None,
    example: Example | None = None,
    output_names: list[str] | None = None,
    dynamic_axes: dict[str, dict[int, str]] | None = None,
    labels: list[str] | None = None,
    preprocessing: list[PreprocessingStep] | None = None,
    parent_version: str | None = None,
    parent_bundle: str | None = None,
    progress: bool = False,
    config_dir: Path = CONFIG_DIR,
) -> CompressionReport:
    """Build, measure and select candidates; with ``private_key``, write one signed bundle per class.

    ``model``: a factory import path ``pkg.module:fn``, a ``torch.save`` file of a module, a module,
    or an ``.onnx`` file. ``data``: an ``.npz`` file, a callable's import path, a mapping or an
    ``EvalData`` (keys: see ``compression.data``). Raises ``CompressionError`` subclasses on bad input
    and ``agent.errors.ConfigError`` on an unknown or invalid device class. A class that no candidate
    suits is reported in ``report.unmet``, not raised.
    """
    task = get_metric(metric)
    classes: list[DeviceClass] = [
        load_device_class(c, config_dir) for c in (device_classes or shipped_device_classes(config_dir))
    ]
    out_dir.mkdir(parents=True, exist_ok=True)
    raw = load_data(data)
    reference: ReferenceModel = load_reference(
        model,
        out_dir / "work" / "reference.onnx",
        example=_example_rows(raw, example),
        output_names=output_names,
        dynamic_axes=dynamic_axes,
        opset=(build or BuildOptions()).opset,
    )
    checked = data_from_mapping(raw, reference.inputs)
    out_spec = reference.outputs[0]
    task.check_labels(checked.labels, checked.rows, (checked.rows, *[d or 1 for d in out_spec.shape[1:]]))
    options = build or BuildOptions()
    evaluation = evaluation or EvalOptions()
    ctx = BuildContext(out_dir, reference, checked, task, options)
    notes = []
    if reference.export_max_error is not None and reference.export_max_error > 1e-3:
        notes.append(f"ONNX export differs from PyTorch by up to {reference.export_max_error:.3g} on the example rows")
    _, split = checked.calibration()
    if split == "validation" and "int8-static" in (techniques or ["int8-static"]):
        notes.append(
            "static INT8 calibrated on the validation rows (no x_calib or x_train given): its drop may flatter it"
        )

    candidates: list[Candidate] = plan_candidates(ctx, techniques)
    with _progress(progress) as bar:
        if bar is not None:
            build_task = bar.add_task("building candidates", total=len(candidates))
            eval_task = bar.add_task("measuring candidates", total=len(candidates))
        build_candidates(ctx, candidates, on_step=lambda c: bar.advance(build_task) if bar is not None else None)
        if candidates[0].status != "built":
            raise RuntimeError(f"the FP32 reference candidate failed: {candidates[0].reason}")
        reference_outputs = evaluate_candidates(
            candidates,
            checked,
            task,
            out_spec.name,
            evaluation,
            on_step=lambda c: bar.advance(eval_task) if bar is not None else None,
        )
    ref_measure = candidates[0].measured
    assert ref_measure is not None
    selections = [select_candidate(candidates, c) for c in classes]
    for s in selections:
        if s.chosen is None:
            log.warning("%s", s.reason)

    stats, stat_notes = input_stats(checked.inputs)
    if private_key is not None:
        spec = BundleSpec(
            name=name,
            version=version,
            private_key=private_key,
            reference=reference,
            metric=task,
            test_rows=checked.head(5),
            reference_stats=stats,
            reference_confidence=confidence_stats(out_spec.name, reference_outputs),
            labels=labels,
            preprocessing=preprocessing,
            parent_version=parent_version,
            parent_bundle=parent_bundle,
            metadata=stat_notes,
        )
        for s in selections:
            if s.chosen is None:
                continue
            chosen = next(c for c in candidates if c.name == s.chosen)
            path, digest, batching = write_bundle(
                chosen, s.device_class, out_dir / "bundles" / f"{s.device_class}.bundle", spec, ref_measure.metric
            )
            s.bundle, s.digest = str(path), digest
            s.batching = f"up to {batching.max_batch_size}" if batching.max_batch_size else f"off: {batching.reason}"
    report = CompressionReport(
        name=name,
        version=version,
        metric=task.name,
        reference={
            "origin": reference.origin,
            "digest": reference.digest,
            "inputs": [i.model_dump() for i in reference.inputs],
            "outputs": [o.model_dump() for o in reference.outputs],
            "metric": ref_measure.metric,
            "rows": checked.rows,
            "export_max_error": reference.export_max_error,
        },
        candidates=candidates,
        selections=selections,
        out_dir=out_dir,
        notes=notes + [f"reference statistics of {k}: {v}" for k, v in stat_notes.items()],
    )
    report.write()
    return report
