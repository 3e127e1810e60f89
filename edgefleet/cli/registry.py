"""`edgefleet registry ...`: the coordinator's model registry: versions, their stages, promotion and rollback."""

from __future__ import annotations

from typing import Any

import typer

from edgefleet.cli.bundle_refs import REF_HELP, model_version
from edgefleet.cli.rest import TokenOption, UrlOption, call, segment
from edgefleet.common.exit_codes import ExitCode
from edgefleet.common.output import Format, FormatOption, fail, print_data

app = typer.Typer(
    help="The model registry: versions, their stages (staging, production, archived), promotion and rollback.",
    no_args_is_help=True,
)

STAGES = ("staging", "production", "archived")
_VERSION_COLUMNS = ["version", "stage", "created_at", "device_classes", "digests"]


def _versions(model: dict[str, Any]) -> list[dict[str, Any]]:
    """A model's versions as table rows: one line each, its bundles' classes and digests joined."""
    return [
        {
            "version": v["version"],
            "stage": v["stage"],
            "created_at": v["created_at"],
            "device_classes": ", ".join(b["device_class"] for b in v["bundles"]),
            "digests": ", ".join(b["digest"][:16] for b in v["bundles"]),
        }
        for v in model["versions"]
    ]


def _show(model: dict[str, Any], fmt: Format) -> None:
    if fmt == Format.json:
        print_data(model, fmt)
    else:
        print_data(_versions(model), fmt, columns=_VERSION_COLUMNS)


@app.command("list")
def list_models(url: str = UrlOption, token: str | None = TokenOption, fmt: Format = FormatOption) -> None:
    """List the registry's models with their production and staging versions.

    Example: edgefleet registry list --format json
    """
    models = call("GET", url, token, "/api/v1/models")
    if fmt == Format.json:
        print_data(models, fmt)
        return
    rows = [
        {
            "model": m["model"],
            "production": m["production"],
            "staging": ", ".join(v["version"] for v in m["versions"] if v["stage"] == "staging"),
            "versions": len(m["versions"]),
        }
        for m in models
    ]
    print_data(rows, fmt, columns=["model", "production", "staging", "versions"])


@app.command()
def show(
    model: str = typer.Argument(..., help="The model's name."),
    url: str = UrlOption,
    token: str | None = TokenOption,
    fmt: Format = FormatOption,
) -> None:
    """Show a model's versions: stage, creation time, and the bundle of each device class.

    Example: edgefleet registry show digits
    """
    _show(call("GET", url, token, f"/api/v1/models/{segment(model)}"), fmt)


@app.command()
def history(
    model: str = typer.Argument(..., help="The model's name."),
    url: str = UrlOption,
    token: str | None = TokenOption,
    fmt: Format = FormatOption,
) -> None:
    """Show every stage change of a model's versions, oldest first.

    Example: edgefleet registry history digits
    """
    rows = call("GET", url, token, f"/api/v1/models/{segment(model)}/history")
    print_data(rows, fmt, columns=None if fmt == Format.json or not rows else list(rows[0]))


def _set_stage(ref: str, stage: str, url: str, token: str | None, fmt: Format) -> None:
    named = model_version(ref, url, token)
    path = f"/api/v1/models/{segment(named.model)}/versions/{segment(named.version)}/stage"
    _show(call("POST", url, token, path, json={"stage": stage}), fmt)


@app.command()
def stage(
    bundle: str = typer.Argument(..., help=REF_HELP, metavar="BUNDLE"),
    to: str = typer.Option(..., "--to", help="staging, production (archives the version there) or archived."),
    url: str = UrlOption,
    token: str | None = TokenOption,
    fmt: Format = FormatOption,
) -> None:
    """Move a version to a stage (operator).

    Example: edgefleet registry stage digits:1.1.0 --to archived
    """
    if to not in STAGES:
        fail(f"--to {to!r}: use one of {', '.join(STAGES)}", ExitCode.USAGE)
    _set_stage(bundle, to, url, token, fmt)


@app.command()
def promote(
    bundle: str = typer.Argument(..., help=REF_HELP, metavar="BUNDLE"),
    url: str = UrlOption,
    token: str | None = TokenOption,
    fmt: Format = FormatOption,
) -> None:
    """Make a version production (operator); the version that was production is archived.

    Example: edgefleet registry promote digits:staging

    Example: edgefleet registry promote 3f2a9c1d0b7e4a5b
    """
    _set_stage(bundle, "production", url, token, fmt)


@app.command()
def rollback(
    model: str = typer.Argument(..., help="The model's name."),
    url: str = UrlOption,
    token: str | None = TokenOption,
    fmt: Format = FormatOption,
) -> None:
    """Make the version that was production before the current one production again (operator).

    Example: edgefleet registry rollback digits
    """
    _show(call("POST", url, token, f"/api/v1/models/{segment(model)}/rollback"), fmt)
