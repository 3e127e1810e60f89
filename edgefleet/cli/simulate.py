"""`edgefleet simulate`: a fleet of simulated devices on one broker (edgefleet.local.simulator)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from edgefleet.cli.rest import TokenOption
from edgefleet.common.exit_codes import ExitCode
from edgefleet.common.output import Format, FormatOption, fail, print_data

__all__ = ["simulate_command"]


def simulate_command(
    devices: int = typer.Option(1000, min=1, max=100_000, help="How many devices, one MQTT connection each."),
    broker: str = typer.Option("mqtt://127.0.0.1:1883", help="The fleet's broker."),
    coordinator: str | None = typer.Option(
        None, "--coordinator", envvar="EDGEFLEET_URL", help="Coordinator URL, for the download sample."
    ),
    token: str | None = TokenOption,
    duration: float = typer.Option(60.0, min=1, help="Seconds to run."),
    telemetry_interval: float = typer.Option(60.0, min=0.5, help="Seconds between two telemetry windows of a device."),
    device_class: str = typer.Option("x86-gateway", help="The devices' class."),
    prefix: str = typer.Option("sim", help="Device ids are PREFIX-00000, PREFIX-00001, ..."),
    fail_fraction: float = typer.Option(0.0, min=0, max=1, help="Share of devices whose activations fail."),
    offline_fraction: float = typer.Option(0.0, min=0, max=1, help="Share of devices that drop off for a while."),
    download_fraction: float = typer.Option(
        0.0, min=0, max=1, help="Share of devices that download each bundle over the HTTP mirror (needs --coordinator)."
    ),
    activation: float = typer.Option(1.0, min=0, help="Seconds a simulated activation takes (0.5x to 1.5x)."),
    credentials: Path | None = typer.Option(
        None, help="JSON file of device id -> broker password, where the broker checks each device's own."
    ),
    connect_rate: float = typer.Option(500.0, min=1, help="New connections per second."),
    fmt: Format = FormatOption,
) -> None:
    """Run simulated devices that speak the real protocol: availability with last will, reported state,
    desired state followed, telemetry windows; prints what happened.

    Example: edgefleet simulate --devices 10000 --broker mqtt://127.0.0.1:1883 --duration 600
    """
    from edgefleet.local.simulator import SimulatorSettings, simulate

    if download_fraction and not coordinator:
        fail("--download-fraction needs --coordinator (the HTTP mirror the sample downloads from)", ExitCode.USAGE)
    passwords: dict[str, str] = {}
    if credentials is not None:
        try:
            passwords = {str(k): str(v) for k, v in json.loads(credentials.read_text()).items()}
        except FileNotFoundError:
            fail(f"{credentials}: no such file", ExitCode.NOT_FOUND)
        except (OSError, ValueError, AttributeError) as exc:
            fail(f"{credentials}: not a JSON object of device id -> password ({exc})", ExitCode.USAGE)
    settings = SimulatorSettings(
        broker_url=broker, devices=devices, device_class=device_class, prefix=prefix, duration_s=duration,
        telemetry_interval_s=telemetry_interval, activation_s=activation, fail_fraction=fail_fraction,
        offline_fraction=offline_fraction, download_fraction=download_fraction, coordinator_url=coordinator,
        token=token, credentials=passwords, connect_rate=connect_rate,
    )  # fmt: skip
    result = simulate(settings)
    print_data(result.as_dict(), fmt)
    if result.connected == 0:
        fail(f"none of the {devices} simulated devices could connect to {broker}", ExitCode.UNREACHABLE)
    if result.connected < devices:
        fail(f"{devices - result.connected} of {devices} simulated devices could not connect to {broker}",
             ExitCode.UNREACHABLE)  # fmt: skip
