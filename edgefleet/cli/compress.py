"""`edgefleet compress`: from a trained model to the measured best signed bundle per device class.

A thin layer over ``compression.pipeline.compress``; register it with
``app.command("compress")(compress_command)``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from edgefleet.common.exit_codes import ExitCode
from edgefleet.common.output import Format, FormatOption, configure_logging, console, existing_file, fail

if TYPE_CHECKING:
    from edgefleet.protocol.model_card import PreprocessingStep

__all__ = ["compress_command"]

log = logging.getLogger(__name__)

# A class no candidate suits is a failed run unless --allow-unmet: the bundles that could be built are
# still written. It exits with ERROR until the CLI has a dedicated code for it.
EXIT_UNMET = ExitCode.ERROR


def _labels(text: str | None) -> list[str] | None:
    if text is None:
        return None
    if text.startswith("@"):
        path = Path(text[1:])
        if not path.is_file():
            fail(f"labels file {path} does not exist", ExitCode.NOT_FOUND)
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    return [part.strip() for part in text.split(",")]


def _preprocessing(path: Path | None) -> list[PreprocessingStep] | None:
    from pydantic import TypeAdapter, ValidationError

    from edgefleet.protocol.model_card import PreprocessingStep

    if path is None:
        return None
    try:
        return TypeAdapter(list[PreprocessingStep]).validate_json(path.read_text())
    except (OSError, ValidationError) as exc:
        fail(f"{path}: not a list of preprocessing steps ({exc})", ExitCode.USAGE)


def _stopped(out: Path) -> str:
    """The prefix of an error message: where the report of the stopped run is."""
    report = out / "report.json"
    return f"stopped; report in {report}: " if report.is_file() else ""


def compress_command(
    model: str = typer.Argument(..., help="pkg.module:factory, a torch.save file of an nn.Module, or an .onnx file."),
    data: str = typer.Option(
        ...,
        "--data",
        help="An .npz file or pkg.module:fn returning arrays: x (or x.<input>), y, x_train, y_train, x_calib.",
    ),
    metric: str = typer.Option(
        ..., "--metric", help="accuracy, mse, or cosine (similarity to the reference's outputs)."
    ),
    name: str = typer.Option(..., "--name", help="Model name in the bundles, e.g. digits."),
    version: str = typer.Option(..., "--version", help="Model version in the bundles, e.g. 1.1.0."),
    out: Path = typer.Option(Path("compressed"), "--out", "-o", help="Output folder: candidates, bundles, reports."),
    key: Path | None = typer.Option(
        None,
        "--key",
        callback=existing_file,
        dir_okay=False,
        help="Private signing key (PEM); without it no bundles are built.",
    ),
    device_class: list[str] | None = typer.Option(
        None, "--device-class", help="Device class to select for; repeatable. Default: every shipped class."
    ),
    techniques: str | None = typer.Option(
        None,
        "--techniques",
        help="Comma-separated: fp32, ort-opt, int8-dynamic, int8-static, fp16, prune, distill, tflite, tensorrt.",
    ),
    student: str | None = typer.Option(None, "--student", help="Distillation student factory, pkg.module:fn."),
    example_shape: str | None = typer.Option(
        None,
        "--example-shape",
        help="Example input shape for exporting a PyTorch model, e.g. 1,64 (default: data rows).",
    ),
    example_dtype: str = typer.Option("float32", "--example-dtype", help="dtype of the example input."),
    labels: str | None = typer.Option(None, "--labels", help="Class names, comma-separated or @file (one a line)."),
    preprocessing: Path | None = typer.Option(
        None,
        "--preprocessing",
        callback=existing_file,
        dir_okay=False,
        help='JSON list of steps, e.g. [{"op": "scale", "params": {"factor": 0.0625}}].',
    ),
    parent_version: str | None = typer.Option(
        None, "--parent-version", help="Version of the model this one derives from."
    ),
    parent_bundle: str | None = typer.Option(
        None, "--parent-bundle", help="Digest of the bundle this one derives from."
    ),
    threads: int = typer.Option(
        1, "--threads", min=0, help="Intra-op threads while timing (0: the runtime's default)."
    ),
    memory: str = typer.Option(
        "subprocess", "--memory", help="Peak memory: subprocess, in-process (best effort) or off."
    ),
    finetune_epochs: int = typer.Option(3, "--finetune-epochs", min=0, help="Fine-tuning epochs after pruning."),
    tflite_python: str | None = typer.Option(
        None,
        "--tflite-python",
        envvar="EDGEFLEET_TFLITE_PYTHON",
        help="Python of a separate environment with litert-torch for the TFLite candidates "
        "(scripts/make_tflite_env.sh makes one), e.g. /opt/litert-venv/bin/python.",
    ),
    distill_epochs: int = typer.Option(30, "--distill-epochs", min=1, help="Distillation epochs."),
    allow_unmet: bool = typer.Option(
        False, "--allow-unmet", help="Exit 0 even when a class has no suitable candidate."
    ),
    output: list[str] | None = typer.Option(
        None,
        "--output",
        help="Output to score; repeatable. Default: every output but one that copies an input; the worst gates.",
    ),
    allow_larger: bool = typer.Option(
        False, "--allow-larger", help="Keep a candidate whose file is larger than the reference's."
    ),
    log_level: str = typer.Option("WARNING", "--log-level", help="Logging level."),
    fmt: Format = FormatOption,
) -> None:
    """Build candidates (ONNX, ORT-optimised, INT8 dynamic/static, FP16, pruned, distilled, TFLite,
    TensorRT), measure each on its runtime, pick the fastest within each device class's constraints,
    and write a signed bundle per class plus report.json and report.md.

    report.json and report.md are written even when the run stops (a model that fails on the data,
    a bundle that cannot be built), with what was measured and why; exit codes as for every command.

    Example: edgefleet compress models.digits:make_net --data val.npz --metric accuracy --name digits
    --version 1.1.0 --key keys/signing.key --out compressed --device-class rpi4
    """
    from edgefleet.cli.errors import fail_with
    from edgefleet.common.errors import ConfigError
    from edgefleet.compression.candidates.base import BuildOptions
    from edgefleet.compression.errors import CompressionError
    from edgefleet.compression.evaluate import EvalOptions
    from edgefleet.compression.pipeline import Example, compress
    from edgefleet.protocol.errors import BundleError
    from edgefleet.protocol.signing import load_private_key

    configure_logging(log_level)
    if memory not in ("subprocess", "in-process", "off"):
        fail(f"--memory must be subprocess, in-process or off, not {memory!r}", ExitCode.USAGE)
    example = None
    if example_shape is not None:
        try:
            example = Example(tuple(int(d) for d in example_shape.split(",")), example_dtype)
        except ValueError:
            fail(f"--example-shape {example_shape!r} is not a comma-separated list of integers", ExitCode.USAGE)
    try:
        report = compress(
            model,
            data,
            metric=metric,
            out_dir=out,
            name=name,
            version=version,
            private_key=load_private_key(key) if key is not None else None,
            device_classes=device_class or None,
            techniques=[t.strip() for t in techniques.split(",")] if techniques else None,
            build=BuildOptions(
                student=student,
                finetune_epochs=finetune_epochs,
                distill_epochs=distill_epochs,
                tflite_python=tflite_python,
                allow_larger=allow_larger,
            ),
            evaluation=EvalOptions(threads=threads, memory=memory),  # type: ignore[arg-type]
            example=example,
            score_outputs=output or None,
            labels=_labels(labels),
            preprocessing=_preprocessing(preprocessing),
            parent_version=parent_version,
            parent_bundle=parent_bundle,
            progress=fmt == Format.table,
        )
    except (CompressionError, ConfigError, BundleError) as exc:
        fail_with(exc, prefix=_stopped(out))
    except Exception as exc:  # the boundary: any other failure is exit 1 with its reason, never a traceback
        log.debug("compress failed", exc_info=True)
        fail_with(exc, prefix=_stopped(out) + f"{type(exc).__name__}: ")
    if fmt == Format.json:
        typer.echo(json.dumps(report.to_dict(), indent=2, default=str))
    else:
        report.print_table(console)
        console.print(f"reports: {out / 'report.json'}, {out / 'report.md'}", markup=False)
    if report.unmet:
        for selection in report.unmet:
            typer.echo(selection.reason, err=True)
        if not allow_unmet:
            raise typer.Exit(int(EXIT_UNMET))
