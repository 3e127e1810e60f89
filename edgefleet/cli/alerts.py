"""`edgefleet alerts ...`: the alerts that hold now, computed by the coordinator from its fleet data."""

from __future__ import annotations

import typer

from edgefleet.cli.rest import TokenOption, UrlOption, call, segment
from edgefleet.common.exit_codes import ExitCode
from edgefleet.common.output import Format, FormatOption, fail, print_data

app = typer.Typer(
    help="Alerts that hold now: offline devices, drift, error rate, latency regression, full disks, overheating, "
    "failed activations, halted rollouts.",
    no_args_is_help=True,
)


@app.command("list")
def list_alerts(
    kind: list[str] = typer.Option(None, "--kind", help="Only this kind, e.g. offline or drift; repeatable."),
    device: str | None = typer.Option(None, "--device", help="Only this device's alerts."),
    severity: str | None = typer.Option(None, "--severity", help="Only critical or only warning alerts."),
    threshold: list[str] = typer.Option(
        None, "--threshold", help="NAME=VALUE overriding one of the coordinator's [alerts] thresholds; repeatable."
    ),
    url: str = UrlOption,
    token: str | None = TokenOption,
    fmt: Format = FormatOption,
) -> None:
    """List the alerts that hold now, most severe first. Exit 0 whether or not there are any.

    Example: edgefleet alerts list --kind offline --threshold offline_after_s=60 --format json
    """
    if severity not in (None, "critical", "warning"):
        fail(f"--severity {severity!r}: use critical or warning", ExitCode.USAGE)
    query = []
    for item in threshold or []:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            fail(f"--threshold {item!r}: expected NAME=VALUE, e.g. max_error_rate=0.01", ExitCode.USAGE)
        query.append(f"{segment(name)}={segment(value)}")
    alerts = call("GET", url, token, "/api/v1/alerts" + (f"?{'&'.join(query)}" if query else ""))
    alerts = [
        a
        for a in alerts
        if (not kind or a["kind"] in kind)
        and (device is None or a["device_id"] == device)
        and (severity is None or a["severity"] == severity)
    ]
    alerts.sort(key=lambda a: (a["severity"] != "critical", a["kind"], a["device_id"]))
    columns = ["severity", "kind", "device_id", "since", "detail", "rollout_id"]
    print_data(alerts, fmt, columns=None if fmt == Format.json else columns)
