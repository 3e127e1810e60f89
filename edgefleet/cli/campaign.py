"""`edgefleet campaign ...`: federated training campaigns through the coordinator's REST API."""

from __future__ import annotations

import json
import time
import tomllib
from pathlib import Path
from typing import Any

import typer

from edgefleet.cli.rest import TokenOption, UrlOption, call
from edgefleet.common.exit_codes import ExitCode
from edgefleet.common.output import Format, FormatOption, console, existing_file, fail, print_data
from edgefleet.protocol.campaign import Decline

app = typer.Typer(help="Federated training campaigns with differential privacy.", no_args_is_help=True)

FINAL = {"completed", "aborted", "failed", "budget_exhausted"}


@app.command()
def create(
    spec_file: Path = typer.Argument(..., callback=existing_file, dir_okay=False, help="Campaign spec, TOML or JSON."),
    target: str = typer.Option("all", help="all, class=NAME, tag=TAG, group=NAME or devices=ID,ID,..."),
    start: bool = typer.Option(False, "--start", help="Start it right away."),
    url: str = UrlOption,
    token: str | None = TokenOption,
    fmt: Format = FormatOption,
) -> None:
    """Create a campaign from a spec file (see federated/spec.py for every key).

    Example: edgefleet campaign create digits-dp.toml --target class=rpi5 --start
    """
    text = spec_file.read_text()
    try:
        spec = json.loads(text) if spec_file.suffix == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        fail(f"{spec_file}: {exc}", ExitCode.CONFIG_INVALID)
    body: dict[str, Any] = {"spec": spec, "target": _target(target), "start": start}
    _show(call("POST", url, token, "/api/v1/campaigns", json=body, invalid=ExitCode.CONFIG_INVALID), fmt)


def _target(text: str) -> dict[str, Any]:
    kind, _, value = text.partition("=")
    if text == "all":
        return {}
    if kind == "class" and value:
        return {"device_class": value}
    if kind == "devices" and value:
        return {"device_ids": value.split(",")}
    if kind in ("tag", "group") and value:
        return {kind: value}
    fail(f"--target {text!r}: use all, class=NAME, tag=TAG, group=NAME or devices=ID,ID", ExitCode.USAGE)


@app.command("start")
def start_command(campaign_id: str, url: str = UrlOption, token: str | None = TokenOption,
                  fmt: Format = FormatOption) -> None:  # fmt: skip
    """Start a created campaign on the eligible devices.

    Example: edgefleet campaign start c1a2b3c4d
    """
    _show(call("POST", url, token, f"/api/v1/campaigns/{campaign_id}/start"), fmt)


@app.command()
def abort(campaign_id: str, url: str = UrlOption, token: str | None = TokenOption, fmt: Format = FormatOption) -> None:
    """Abort a campaign after its running round; no model is registered.

    Example: edgefleet campaign abort c1a2b3c4d
    """
    _show(call("POST", url, token, f"/api/v1/campaigns/{campaign_id}/abort"), fmt)


@app.command()
def status(
    campaign_id: str,
    watch: bool = typer.Option(False, "--watch", help="Follow the campaign until it ends."),
    url: str = UrlOption,
    token: str | None = TokenOption,
    fmt: Format = FormatOption,
) -> None:
    """A campaign's progress: per round its participants, declines, accuracy and epsilon spent.

    Example: edgefleet campaign status c1a2b3c4d --watch
    """
    shown = 0
    while True:
        campaign = call("GET", url, token, f"/api/v1/campaigns/{campaign_id}")
        rounds = campaign.get("history", [])
        if fmt != Format.json:
            for record in rounds[shown:]:
                console.print(_round_line(record), markup=False)
                for line in _decline_lines(record):
                    console.print(line, markup=False)
            shown = len(rounds)
        if not watch or campaign["status"] in FINAL:
            break
        time.sleep(1)
    _show(campaign, fmt, with_history=fmt == Format.json)
    if campaign["status"] in ("failed", "aborted"):
        raise typer.Exit(int(ExitCode.ERROR))


@app.command("list")
def list_campaigns(url: str = UrlOption, token: str | None = TokenOption, fmt: Format = FormatOption) -> None:
    """List campaigns, newest first.

    Example: edgefleet campaign list
    """
    rows = call("GET", url, token, "/api/v1/campaigns")
    columns = ["id", "model", "base_version", "status", "round", "epsilon", "result_version", "reason"]
    print_data(rows, fmt, columns=None if fmt == Format.json else columns)


def _round_line(record: dict[str, Any]) -> str:
    evaluation = record.get("evaluation") or {}
    accuracy = f" accuracy {evaluation['accuracy']:.3f}" if "accuracy" in evaluation else ""
    on_devices = record.get("device_evaluation") or {}
    if "accuracy" in on_devices:
        accuracy += f" (on {on_devices['devices']:.0f} devices {on_devices['accuracy']:.3f})"
    epsilons = [p["epsilon"] for p in record.get("participants", []) if "epsilon" in p]
    epsilon = f" max epsilon {max(epsilons):.2f}" if epsilons else ""
    own = [p["local_epsilon"] for p in record.get("participants", []) if "local_epsilon" in p]
    if own:
        epsilon += f" (one update alone {max(own):.2f})"
    if record.get("central_epsilon") is not None:
        epsilon = f" epsilon {record['central_epsilon']:.2f}"
    return (
        f"round {record['round']} {record['status']}: {len(record.get('participants', []))} trained, "
        f"{len(record.get('declined', []))} declined, {record.get('missing', 0)} missing"
        f"{accuracy}{epsilon} ({record.get('duration_s', 0):.1f} s) {record.get('reason', '')}"
    )


def _decline_lines(record: dict[str, Any]) -> list[str]:
    """Who declined a round and why, one line each (the reason names the device)."""
    lines = []
    for declined in record.get("declined", []):
        code = declined.get("code")
        try:
            kind = Decline(int(code)).name.lower()
        except (TypeError, ValueError):
            kind = f"code {code}"
        lines.append(f"  declined ({kind}): {declined.get('reason') or declined.get('node', '?')}")
    return lines


def _show(campaign: dict[str, Any], fmt: Format, *, with_history: bool = True) -> None:
    if fmt == Format.json:
        print_data(campaign, fmt)
        return
    keep = ("id", "model", "base_version", "status", "round", "rounds_total", "devices", "epsilon",
            "result_version", "reason")  # fmt: skip
    print_data({k: campaign.get(k) for k in keep if k in campaign}, fmt)
    if campaign.get("privacy"):
        console.print(f"privacy: {campaign['privacy']}", markup=False)
