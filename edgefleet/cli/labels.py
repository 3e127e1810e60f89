"""`edgefleet labels ...`: devices' tags and groups, which rollouts and campaigns target (tag=, group=)."""

from __future__ import annotations

from typing import Any

import typer

from edgefleet.cli.rest import TokenOption, UrlOption, call, segment
from edgefleet.common.exit_codes import ExitCode
from edgefleet.common.output import Format, FormatOption, fail, print_data

app = typer.Typer(
    help="Devices' tags and groups, which rollouts and campaigns target with tag= and group=.", no_args_is_help=True
)

_COLUMNS = ["device_id", "device_class", "tags", "group"]


def _show(device: dict[str, Any], fmt: Format) -> None:
    labels = {k: device.get(k) for k in _COLUMNS}
    print_data(labels, fmt, columns=None if fmt == Format.json else _COLUMNS)


@app.command("list")
def list_labels(
    device_class: str | None = typer.Option(None, "--class", help="Only devices of this class."),
    tag: str | None = typer.Option(None, "--tag", help="Only devices with this tag."),
    group: str | None = typer.Option(None, "--group", help="Only devices in this group."),
    counts: bool = typer.Option(False, "--counts", help="Each tag and group with its number of devices instead."),
    url: str = UrlOption,
    token: str | None = TokenOption,
    fmt: Format = FormatOption,
) -> None:
    """List each device's tags and group, or (--counts) every tag and group in use.

    Example: edgefleet labels list --group north --format json
    """
    filters = {"device_class": device_class, "tag": tag, "group": group}
    query = "&".join(f"{k}={segment(v)}" for k, v in filters.items() if v is not None)
    found = call("GET", url, token, "/api/v1/labels" + (f"?{query}" if query else ""))
    if fmt == Format.json:
        print_data(found if counts else found["devices"], fmt)
    elif counts:
        rows = [{"kind": "tag", **t} for t in found["tags"]] + [{"kind": "group", **g} for g in found["groups"]]
        print_data(rows, fmt, columns=["kind", "name", "devices"])
    else:
        rows = [d | {"tags": ", ".join(d["tags"])} for d in found["devices"]]
        print_data(rows, fmt, columns=_COLUMNS)


@app.command("set")
def set_labels(
    device_id: str = typer.Argument(..., help="The device."),
    tag: list[str] = typer.Option(None, "--tag", help="A tag to add; repeatable."),
    group: str | None = typer.Option(None, "--group", help="The device's group (replacing its own)."),
    replace: bool = typer.Option(False, "--replace", help="The --tag options replace the device's tags."),
    url: str = UrlOption,
    token: str | None = TokenOption,
    fmt: Format = FormatOption,
) -> None:
    """Add tags to a device (or replace its tags) and set its group (operator).

    Example: edgefleet labels set pi-07 --tag lab --tag camera --group north
    """
    if not tag and group is None and not replace:
        fail("nothing to set: give --tag, --group, or --replace", ExitCode.USAGE)
    if group == "":
        fail("--group '': use `edgefleet labels remove DEVICE --group` to remove a group", ExitCode.USAGE)
    path = f"/api/v1/devices/{segment(device_id)}/labels"
    if replace:
        device = call("PUT", url, token, path, json={"tags": tag or [], "group": group})
    else:
        device = call("PATCH", url, token, path, json={"add_tags": tag or [], "group": group})
    _show(device, fmt)


@app.command("remove")
def remove_labels(
    device_id: str = typer.Argument(..., help="The device."),
    tag: list[str] = typer.Option(None, "--tag", help="A tag to remove; repeatable."),
    group: bool = typer.Option(False, "--group", help="Take the device out of its group."),
    url: str = UrlOption,
    token: str | None = TokenOption,
    fmt: Format = FormatOption,
) -> None:
    """Remove tags from a device, or take it out of its group (operator).

    Example: edgefleet labels remove pi-07 --tag lab --group
    """
    if not tag and not group:
        fail("nothing to remove: give --tag or --group", ExitCode.USAGE)
    body = {"remove_tags": tag or [], "group": "" if group else None}
    _show(call("PATCH", url, token, f"/api/v1/devices/{segment(device_id)}/labels", json=body), fmt)
