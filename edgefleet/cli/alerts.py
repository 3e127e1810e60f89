"""`edgefleet alerts ...`: the alerts that hold now, computed by the coordinator from its fleet data, and an
operator's acknowledgments and silences of them."""

from __future__ import annotations

import re
from typing import Any

import typer

from edgefleet.cli.rest import TokenOption, UrlOption, call, segment
from edgefleet.common.exit_codes import ExitCode
from edgefleet.common.output import Format, FormatOption, fail, print_data

app = typer.Typer(
    help="Alerts that hold now: offline devices, drift, error rate, latency regression, full disks, overheating, "
    "failed activations, halted rollouts; acknowledge or silence them (an operator token).",
    no_args_is_help=True,
)

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_KIND = typer.Argument(..., help="The alert's kind, e.g. offline, drift, disk_full, rollout_halted.")
_NOTE = typer.Option(None, "--note", help="A note kept with it, e.g. what is being done.")


@app.command("list")
def list_alerts(
    kind: list[str] = typer.Option(None, "--kind", help="Only this kind, e.g. offline or drift; repeatable."),
    device: str | None = typer.Option(None, "--device", help="Only this device's alerts."),
    severity: str | None = typer.Option(None, "--severity", help="Only critical or only warning alerts."),
    threshold: list[str] = typer.Option(
        None, "--threshold", help="NAME=VALUE overriding one of the coordinator's [alerts] thresholds; repeatable."
    ),
    include_silenced: bool = typer.Option(False, "--include-silenced", help="List silenced alerts too."),
    url: str = UrlOption,
    token: str | None = TokenOption,
    fmt: Format = FormatOption,
) -> None:
    """List the alerts that hold now, most severe first, with who acknowledged each (silenced ones left out
    unless --include-silenced). Exit 0 whether or not there are any.

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
    if include_silenced:
        query.append("include_silenced=true")
    alerts = call("GET", url, token, "/api/v1/alerts" + (f"?{'&'.join(query)}" if query else ""))
    alerts = [
        a
        for a in alerts
        if (not kind or a["kind"] in kind)
        and (device is None or a["device_id"] == device)
        and (severity is None or a["severity"] == severity)
    ]
    alerts.sort(key=lambda a: (a["severity"] != "critical", a["kind"], a["device_id"]))
    if fmt == Format.json:
        print_data(alerts, fmt)
        return
    rows = [a | {"acknowledged_by": (a.get("acknowledged") or {}).get("by")} for a in alerts]
    columns = ["severity", "kind", "device_id", "since", "detail", "rollout_id", "acknowledged_by"]
    print_data(rows, fmt, columns=columns + (["silenced_until"] if include_silenced else []))


@app.command("ack")
def ack(
    kind: str = _KIND,
    device: str = typer.Argument("", help="The alert's device; leave out for a fleet-level alert."),
    rollout: str | None = typer.Option(None, "--rollout", help="A halted rollout's alert: the rollout's id."),
    note: str | None = _NOTE,
    url: str = UrlOption,
    token: str | None = TokenOption,
    fmt: Format = FormatOption,
) -> None:
    """Acknowledge an alert that holds now: it stays listed, marked with your token's name, the time and the
    note, until it clears (a later return is a new alert). Needs an operator token; 5 if no such alert holds.

    Example: edgefleet alerts ack offline gw-1 --note "power cut at the site, on it"
    """
    body: dict[str, Any] = {"kind": kind, "device_id": device, "rollout_id": rollout, "note": note}
    print_data(call("POST", url, token, "/api/v1/alerts/acknowledgments", json=body), fmt)


@app.command("silence")
def silence(
    kind: str = _KIND,
    device: str | None = typer.Option(None, "--device", help="Only this device's alerts; default every device's."),
    until: str | None = typer.Option(None, "--until", help="When it ends: ISO 8601, e.g. 2026-07-01T08:00:00Z."),
    lasting: str | None = typer.Option(None, "--for", help="Or how long it lasts: 90s, 30m, 2h, 7d."),
    note: str | None = _NOTE,
    url: str = UrlOption,
    token: str | None = TokenOption,
    fmt: Format = FormatOption,
) -> None:
    """Hide alerts of a kind, for one device or all, until a time; they come back by themselves after it (or
    with `alerts unsilence`). Needs an operator token.

    Example: edgefleet alerts silence offline --device gw-7 --for 2h --note "maintenance window"
    """
    if (until is None) == (lasting is None):
        fail("give either --until TIME or --for DURATION", ExitCode.USAGE)
    body: dict[str, Any] = {"kind": kind, "device_id": device, "note": note}
    body |= {"until": until} if until is not None else {"duration_s": _seconds(str(lasting))}
    print_data(call("POST", url, token, "/api/v1/alerts/silences", json=body), fmt)


@app.command("unack")
def unack(
    kind: str = _KIND,
    device: str = typer.Argument("", help="The alert's device; leave out for a fleet-level alert."),
    rollout: str | None = typer.Option(None, "--rollout", help="A halted rollout's alert: the rollout's id."),
    url: str = UrlOption,
    token: str | None = TokenOption,
    fmt: Format = FormatOption,
) -> None:
    """Take an acknowledgment back: the alert counts as unacknowledged again. Needs an operator token; 5 if the
    alert is not acknowledged.

    Example: edgefleet alerts unack offline gw-7
    """
    params = "&".join(f"{k}={segment(v)}" for k, v in (("device_id", device), ("rollout_id", rollout)) if v)
    query = f"?{params}" if params else ""
    print_data(call("DELETE", url, token, f"/api/v1/alerts/acknowledgments/{segment(kind)}{query}"), fmt)


@app.command("unsilence")
def unsilence(
    kind: str = _KIND,
    device: str | None = typer.Option(None, "--device", help="The device's silence; default the every-device one."),
    url: str = UrlOption,
    token: str | None = TokenOption,
    fmt: Format = FormatOption,
) -> None:
    """End a silence before its time. Needs an operator token; 5 if there is no such silence.

    Example: edgefleet alerts unsilence offline --device gw-7
    """
    query = f"?device_id={segment(device)}" if device else ""
    print_data(call("DELETE", url, token, f"/api/v1/alerts/silences/{segment(kind)}{query}"), fmt)


@app.command("silences")
def silences(url: str = UrlOption, token: str | None = TokenOption, fmt: Format = FormatOption) -> None:
    """List the silences in force now ("*": every device).

    Example: edgefleet alerts silences --format json
    """
    rows = call("GET", url, token, "/api/v1/alerts/silences")
    columns = ["kind", "device_id", "until", "silenced_by", "silenced_at", "note"]
    print_data(rows, fmt, columns=None if fmt == Format.json else columns)


def _seconds(text: str) -> float:
    """A duration such as 90, 90s, 30m, 1h or 7d, in seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not match or float(match.group(1)) <= 0:
        fail(f"--for {text!r} is not a duration: use e.g. 90s, 30m, 2h or 7d", ExitCode.USAGE)
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]
