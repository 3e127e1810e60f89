"""`edgefleet rollout ...`: staged rollouts through the coordinator's REST API."""

from __future__ import annotations

import time
from typing import Any

import typer

from edgefleet.cli.bundle_refs import REF_HELP, model_version
from edgefleet.cli.rest import TokenOption, UrlOption, call, segment
from edgefleet.common.exit_codes import ExitCode
from edgefleet.common.output import Format, FormatOption, console, err_console, fail, print_data

app = typer.Typer(help="Staged rollouts with health gates and automatic rollback.", no_args_is_help=True)

FINAL = {"completed", "completed_with_skips", "halted", "aborted", "rolled_back"}


@app.command()
def create(
    model: str = typer.Argument(
        ..., help=REF_HELP + " A digest rolls out its version to the devices of its class.", metavar="BUNDLE"
    ),
    target: str = typer.Option("all", help="all, class=NAME, tag=TAG, group=NAME or devices=ID,ID,..."),
    waves: str = typer.Option("10%,50%,100%", help="Cumulative waves: percentages or device counts."),
    soak: float = typer.Option(60.0, help="Seconds to watch each wave before its gates are checked."),
    wave_timeout: float = typer.Option(600.0, help="Seconds to wait for a wave's online devices."),
    max_error_rate: float = typer.Option(0.05, help="Gate: inference error rate on the new bundle."),
    max_p95_ratio: float = typer.Option(2.0, help="Gate: new p95 latency / previous p95 latency."),
    max_drift_alert_fraction: float | None = typer.Option(
        None,
        min=0.0,
        max=1.0,
        help="Gate: share of the devices on the new bundle that may report drift during a soak (off if unset).",
    ),
    wait: bool = typer.Option(False, "--wait", help="Follow the rollout until it ends."),
    url: str = UrlOption,
    token: str | None = TokenOption,
    fmt: Format = FormatOption,
) -> None:
    """Start a rollout.

    Example: edgefleet rollout create digits:2.0.0 --target class=rpi4 --waves 1%,10%,50%,100% --soak 300 --wait

    Example: edgefleet rollout create digits:3.0.0 --max-drift-alert-fraction 0.1

    Example: edgefleet rollout create 3f2a9c1d0b7e4a5b --waves 1,100%
    """
    named = model_version(model, url, token)
    if not named.model or not named.version:
        fail(f"{model!r}: expected MODEL:VERSION, a digest or a unique prefix of one", ExitCode.USAGE)
    body: dict[str, Any] = {
        "model": named.model,
        "version": named.version,
        "waves": [w.strip() for w in waves.split(",") if w.strip()],
        "soak_s": soak,
        "wave_timeout_s": wave_timeout,
        "gates": {
            "max_error_rate": max_error_rate,
            "max_p95_latency_ratio": max_p95_ratio,
            "max_drift_alert_fraction": max_drift_alert_fraction,
        },
    }
    kind, _, value = target.partition("=")
    if kind == "class" and value:
        body["device_class"] = value
    elif kind == "devices" and value:
        body["device_ids"] = value.split(",")
    elif kind in ("tag", "group") and value:
        body[kind] = value
    elif target != "all":
        fail(f"--target {target!r}: use all, class=NAME, tag=TAG, group=NAME or devices=ID,ID", ExitCode.USAGE)
    if named.bundle is not None:  # a digest names one bundle, of one class: only that class's devices get it
        bundle_class = str(named.bundle["device_class"])
        if body.setdefault("device_class", bundle_class) != bundle_class:
            fail(f"{model} is a bundle for {bundle_class}, not for --target {target}", ExitCode.USAGE)
    rollout = call("POST", url, token, "/api/v1/rollouts", json=body)
    if wait:
        rollout = _follow(rollout["id"], url, token, fmt)
    _show(rollout, fmt)
    # --wait promises every targeted device runs the bundle: anything less is not success.
    if rollout["status"] in ("halted", "aborted", "rolled_back") or (wait and rollout["status"] != "completed"):
        raise typer.Exit(int(ExitCode.ERROR))


def _follow(rollout_id: str, url: str, token: str | None, fmt: Format) -> dict[str, Any]:
    from rich.progress import BarColumn, Progress, TextColumn

    # Progress goes to stderr, and not at all under --format json: stdout holds only the result, and
    # stderr only an error, if one ends the command, so that both parse.
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"))
    with Progress(*columns, console=err_console, disable=fmt == Format.json) as bar:
        task = bar.add_task(f"rollout {rollout_id}", total=None)
        while True:
            rollout = call("GET", url, token, f"/api/v1/rollouts/{segment(rollout_id)}")
            states = rollout["devices"]
            total = sum(states.values())
            bar.update(
                task,
                total=total,
                completed=states.get("active", 0),
                description=f"rollout {rollout_id} wave {rollout['wave'] + 1}/{len(rollout['waves'])} "
                f"[{rollout['status']}]",
            )
            if rollout["status"] in FINAL:
                return dict(rollout)
            time.sleep(1)


def _show(rollout: dict[str, Any], fmt: Format) -> None:
    if fmt == Format.json:
        print_data(rollout, fmt)
        return
    summary = {k: v for k, v in rollout.items() if k != "device_states"}
    print_data(summary, fmt)
    if rollout.get("reason"):
        console.print(f"reason: {rollout['reason']}", markup=False)


@app.command()
def status(rollout_id: str, url: str = UrlOption, token: str | None = TokenOption, fmt: Format = FormatOption) -> None:
    """Show a rollout's progress and per-device states.

    Example: edgefleet rollout status 3f2a9c1d0b7e --format json
    """
    rollout = call("GET", url, token, f"/api/v1/rollouts/{segment(rollout_id)}")
    _show(rollout, fmt)
    if fmt != Format.json:
        print_data(rollout["device_states"], fmt, columns=["device_id", "wave", "state", "detail"])


@app.command("list")
def list_rollouts(url: str = UrlOption, token: str | None = TokenOption, fmt: Format = FormatOption) -> None:
    """List rollouts, newest first.

    Example: edgefleet rollout list
    """
    rows = call("GET", url, token, "/api/v1/rollouts")
    print_data(
        rows, fmt, columns=None if fmt == Format.json else ["id", "model", "version", "status", "wave", "reason"]
    )


def _action(verb: str) -> None:
    def command(
        rollout_id: str, url: str = UrlOption, token: str | None = TokenOption, fmt: Format = FormatOption
    ) -> None:
        _show(call("POST", url, token, f"/api/v1/rollouts/{segment(rollout_id)}/{verb}"), fmt)

    command.__doc__ = f"{verb.capitalize()} a rollout.\n\n    Example: edgefleet rollout {verb} 3f2a9c1d0b7e\n    "
    app.command(verb)(command)


for _verb in ("pause", "resume", "abort", "rollback"):
    _action(_verb)


@app.command()
def events(
    rollout_id: str | None = typer.Option(None, "--rollout", help="Only this rollout's events."),
    url: str = UrlOption,
    token: str | None = TokenOption,
    fmt: Format = FormatOption,
) -> None:
    """Show recent rollout events.

    Example: edgefleet rollout events --rollout 3f2a9c1d0b7e
    """
    query = f"?rollout_id={rollout_id}" if rollout_id else ""
    rows = call("GET", url, token, f"/api/v1/events{query}")
    print_data(rows, fmt, columns=None if fmt == Format.json else ["at", "kind", "rollout_id", "device_id", "detail"])
