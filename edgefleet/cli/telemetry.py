"""`edgefleet telemetry ...`: the coordinator's telemetry rollups (per device or fleet-wide) and latest figures."""

from __future__ import annotations

from enum import StrEnum

import typer

from edgefleet.cli.rest import TokenOption, UrlOption, call, segment
from edgefleet.common.exit_codes import ExitCode
from edgefleet.common.output import Format, FormatOption, fail, print_data

app = typer.Typer(
    help="Telemetry rollups per minute or hour, of one device or the whole fleet, and each device's latest figures.",
    no_args_is_help=True,
)


class Resolution(StrEnum):
    minute = "minute"
    hour = "hour"


_DEVICE_COLUMNS = ["bucket_start", "reports", "inference_count", "error_count", "error_rate", "latency_ms_p50",
                   "latency_ms_p95", "latency_ms_p99", "drift_alerts"]  # fmt: skip
_LATEST_COLUMNS = ["device_id", "received_at", "latency_ms_p95", "drift_alert", "drift_score", "device_cpu_percent",
                   "soc_temp_c", "disk_used_percent", "outbox_pending"]  # fmt: skip


@app.command()
def rollups(
    device: str | None = typer.Option(None, "--device", help="One device's buckets; default: the fleet's."),
    device_class: str | None = typer.Option(None, "--class", help="The fleet's buckets over this class only."),
    resolution: Resolution = typer.Option(Resolution.minute, "--resolution", help="Bucket width."),
    since: str | None = typer.Option(None, "--since", help="ISO 8601 time, e.g. 2026-01-01T00:00:00Z."),
    limit: int = typer.Option(60, "--limit", min=1, max=1440, help="Most buckets shown, newest first."),
    url: str = UrlOption,
    token: str | None = TokenOption,
    fmt: Format = FormatOption,
) -> None:
    """Show telemetry per minute or hour, newest first: requests, errors, error rate, latency percentiles
    (from the added-up histograms), resource use; the fleet's buckets also count the devices reporting.

    Example: edgefleet telemetry rollups --device pi-07 --resolution hour --limit 24

    Example: edgefleet telemetry rollups --class rpi4 --format json
    """
    if device is not None and device_class is not None:
        fail("--device and --class: give one (a device has one class)", ExitCode.USAGE)
    query = {"resolution": resolution.value, "since": since, "limit": str(limit), "device_class": device_class}
    params = "&".join(f"{k}={segment(v)}" for k, v in query.items() if v is not None)
    path = f"/api/v1/devices/{segment(device)}/telemetry/rollups" if device else "/api/v1/telemetry/rollups"
    rows = call("GET", url, token, f"{path}?{params}")
    if fmt == Format.json:
        print_data(rows, fmt)
        return
    columns = _DEVICE_COLUMNS if device else [*_DEVICE_COLUMNS[:1], "devices", *_DEVICE_COLUMNS[1:]]
    print_data(rows, fmt, columns=columns)


@app.command()
def latest(url: str = UrlOption, token: str | None = TokenOption, fmt: Format = FormatOption) -> None:
    """Show every device's most recent figures: latency, drift, CPU, temperature, disk, outbox.

    Example: edgefleet telemetry latest --format json
    """
    rows = call("GET", url, token, "/api/v1/telemetry/latest")
    if fmt == Format.json:
        print_data(rows, fmt)
        return
    print_data(rows, fmt, columns=_LATEST_COLUMNS)
