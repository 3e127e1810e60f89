"""The compression API: from a reference model and data to measured candidates, a choice per device
class, signed bundles and a report.

    from edgefleet.compression import compress
    report = compress("pkg.models:make_net", "val.npz", metric="accuracy", out_dir=Path("out"),
                      name="digits", version="1.1.0", private_key=load_private_key(Path("keys/signing.key")))
"""

from __future__ import annotations

import logging
import shutil
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
from edgefleet.compression.candidates import BuildContext, BuildOptions, build_candidates, plan_candidates
from edgefleet.compression.data import EvalData, data_from_mapping, input_names_in, load_data
from edgefleet.compression.errors import DataError, MetricError, ModelSourceError
from edgefleet.compression.evaluate import EvalOptions, evaluate_candidates
from edgefleet.compression.metrics import Metric, get_metric
from edgefleet.compression.outputs import fits_labels
from edgefleet.compression.record import RunRecord
from edgefleet.compression.report import CompressionReport
from edgefleet.compression.screening import screen_candidates
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
    score_outputs: list[str] | None = None,
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
    ``EvalData`` (keys: see ``compression.data``). ``output_names`` names a PyTorch model's outputs in
    the export; ``score_outputs`` chooses which outputs are scored (default: every one but those that
    copy an input; the worst gates). Raises ``CompressionError`` subclasses on bad input (a reference
    model that fails on the data is ``ModelRunError``), ``agent.errors.ConfigError`` on an unknown or
    invalid device class, and ``BundleError`` when a bundle cannot be built. A class that no candidate
    suits is reported in ``report.unmet``, not raised. Whatever happens, report.json and report.md
    are written with what was measured and, if the run stopped, why; ONNX Runtime's temporary files
    stay in ``out_dir/work`` (removed at the end), never the current directory.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    record = RunRecord(name, version, metric, out_dir)
    try:
        _run(
            record,
            model,
            data,
            private_key=private_key,
            device_classes=device_classes,
            techniques=techniques,
            build=build or BuildOptions(),
            evaluation=evaluation or EvalOptions(),
            example=example,
            output_names=output_names,
            score_outputs=score_outputs,
            dynamic_axes=dynamic_axes,
            labels=labels,
            preprocessing=preprocessing,
            parent_version=parent_version,
            parent_bundle=parent_bundle,
            progress=progress,
            config_dir=config_dir,
        )
    except BaseException as exc:
        record.stop(exc)
        record.report().write()
        log.debug("compression of %s stopped while %s", name, record.stage, exc_info=True)
        raise
    finally:
        shutil.rmtree(out_dir / "work" / "tmp", ignore_errors=True)
    report = record.report()
    report.write()
    return report


def _run(
    record: RunRecord,
    model: str | Path | torch.nn.Module,
    data: str | Path | Mapping[str, np.ndarray] | EvalData,
    *,
    private_key: Ed25519PrivateKey | None,
    device_classes: list[str] | None,
    techniques: list[str] | None,
    build: BuildOptions,
    evaluation: EvalOptions,
    example: Example | None,
    output_names: list[str] | None,
    score_outputs: list[str] | None,
    dynamic_axes: dict[str, dict[int, str]] | None,
    labels: list[str] | None,
    preprocessing: list[PreprocessingStep] | None,
    parent_version: str | None,
    parent_bundle: str | None,
    progress: bool,
    config_dir: Path,
) -> None:
    out_dir = record.out_dir
    record.stage = "checking the options"
    task = get_metric(record.metric)
    classes: list[DeviceClass] = [
        load_device_class(c, config_dir) for c in (device_classes or shipped_device_classes(config_dir))
    ]
    record.stage = "loading the data"
    raw = load_data(data)
    record.stage = "loading the model"
    reference: ReferenceModel = load_reference(
        model,
        out_dir / "work" / "reference.onnx",
        example=_example_rows(raw, example),
        output_names=output_names,
        dynamic_axes=dynamic_axes,
        opset=build.opset,
    )
    record.reference = reference
    record.stage = "checking the data"
    checked = data_from_mapping(raw, reference.inputs)
    record.rows = checked.rows
    task.check_labels(checked.labels, checked.rows)
    _check_outputs(task, checked, reference, score_outputs)
    ctx = BuildContext(out_dir, reference, checked, task, build)
    if reference.export_max_error is not None and reference.export_max_error > 1e-3:
        record.notes.append(
            f"ONNX export differs from PyTorch by up to {reference.export_max_error:.3g} on the example rows"
        )
    if reference.quantized is not None:
        record.notes.append(f"the input model is already quantized ({reference.quantized})")
    _, split = checked.calibration()
    if split == "validation" and "int8-static" in (techniques or ["int8-static"]):
        record.notes.append(
            "static INT8 calibrated on the validation rows (no x_calib or x_train given): its drop may flatter it"
        )

    record.stage = "planning candidates"
    record.candidates = candidates = plan_candidates(ctx, techniques)
    with _progress(progress) as bar:
        if bar is not None:
            build_task = bar.add_task("building candidates", total=len(candidates))
            eval_task = bar.add_task("measuring candidates", total=len(candidates))
        record.stage = "building candidates"
        build_candidates(ctx, candidates, on_step=lambda c: bar.advance(build_task) if bar is not None else None)
        if candidates[0].status != "built":
            raise ModelSourceError(f"the reference candidate could not be written: {candidates[0].reason}")
        record.notes += screen_candidates(candidates, allow_larger=build.allow_larger)
        record.stage = "measuring candidates"
        plan = evaluate_candidates(
            candidates,
            checked,
            task,
            score_outputs,
            evaluation,
            on_step=lambda c: bar.advance(eval_task) if bar is not None else None,
        )
    record.plan = plan
    record.notes += plan.notes()
    ref_measure = candidates[0].measured
    assert ref_measure is not None
    record.stage = "selecting candidates"
    record.selections = selections = [select_candidate(candidates, c) for c in classes]
    for s in selections:
        if s.chosen is None:
            log.warning("%s", s.reason)

    stats, stat_notes = input_stats(checked.inputs)
    record.notes += [f"reference statistics of {k}: {v}" for k, v in stat_notes.items()]
    if private_key is None:
        return
    record.stage = "writing bundles"
    spec = BundleSpec(
        name=record.name,
        version=record.version,
        private_key=private_key,
        reference=reference,
        metric=task,
        test_rows=checked.head(5),
        reference_stats=stats,
        reference_confidence=confidence_stats(plan.primary, plan.reference[plan.primary]),
        labels=labels,
        preprocessing=preprocessing,
        parent_version=parent_version,
        parent_bundle=parent_bundle,
        metadata=stat_notes,
    )
    for s in selections:
        if s.chosen is None:
            continue
        record.stage = f"writing the bundle for {s.device_class}"
        chosen = next(c for c in candidates if c.name == s.chosen)
        path, digest, batching = write_bundle(
            chosen, s.device_class, out_dir / "bundles" / f"{s.device_class}.bundle", spec, ref_measure.metric
        )
        s.bundle, s.digest = str(path), digest
        s.batching = f"up to {batching.max_batch_size}" if batching.max_batch_size else f"off: {batching.reason}"
    record.stage = "done"


def _check_outputs(task: Metric, data: EvalData, reference: ReferenceModel, requested: list[str] | None) -> None:
    """Fail before building anything when the outputs named, or the labels, cannot be scored."""
    names = reference.output_names
    unknown = [n for n in requested or [] if n not in names]
    if unknown:
        raise MetricError(f"no output {unknown[0]!r}; the model's outputs are {', '.join(names)}")
    if not task.needs_labels or data.labels is None:
        return
    labels = data.labels
    specs = [o for o in reference.outputs if not requested or o.name in requested]
    if not any(fits_labels(task, tuple(d if isinstance(d, int) else None for d in o.shape), labels) for o in specs):
        shapes = ", ".join(f"{o.name} {list(o.shape)}" for o in specs)
        raise MetricError(
            f"metric {task.name}: the labels (shape {list(labels.shape)}) fit none of the scored outputs "
            f"({shapes}); choose outputs with --output, or use cosine"
        )
