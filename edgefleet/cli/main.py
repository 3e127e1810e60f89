"""The `edgefleet` command: sub-commands grouped by area, each area's module imported when it runs.

`edgefleet --help` lists the areas from ``AREAS`` alone; a command's module, and what it needs (gRPC,
numpy, pydantic models, cryptography), is imported only when that command is resolved, so
`edgefleet rollout list` never loads the agent's modules and `--help` answers at once.
"""

from __future__ import annotations

import importlib
from typing import Any, NamedTuple

import click
import typer
from typer.core import TyperGroup

from edgefleet.common.exit_codes import HELP

__all__ = ["AREAS", "app", "load_area", "main"]


class Area(NamedTuple):
    module: str
    attr: str  # a typer.Typer (a group of commands) or a command function
    help: str  # what `edgefleet --help` shows for it: the first paragraph of its help (tests check they agree)


AREAS: dict[str, Area] = {
    "agent": Area("edgefleet.cli.agent", "app", "The daemon on each edge device."),
    "coordinator": Area("edgefleet.cli.coordinator", "app", "The fleet's control plane."),
    "bundle": Area("edgefleet.cli.bundle", "bundle_app", "Build, verify and inspect signed model bundles."),
    "keys": Area("edgefleet.cli.bundle", "keys_app", "Signing keys for bundles."),
    "rollout": Area("edgefleet.cli.rollout", "app", "Staged rollouts with health gates and automatic rollback."),
    "campaign": Area("edgefleet.cli.campaign", "app", "Federated training campaigns with differential privacy."),
    "registry": Area(
        "edgefleet.cli.registry",
        "app",
        "The model registry: versions, their stages (staging, production, archived), promotion and rollback.",
    ),
    "labels": Area(
        "edgefleet.cli.labels",
        "app",
        "Devices' tags and groups, which rollouts and campaigns target with tag= and group=.",
    ),
    "alerts": Area(
        "edgefleet.cli.alerts",
        "app",
        "Alerts that hold now: offline devices, drift, error rate, latency regression, full disks, overheating, "
        "failed activations, halted rollouts; acknowledge or silence them (an operator token).",
    ),
    "telemetry": Area(
        "edgefleet.cli.telemetry",
        "app",
        "Telemetry rollups per minute or hour, of one device or the whole fleet, and each device's latest figures.",
    ),
    "compress": Area(
        "edgefleet.cli.compress",
        "compress_command",
        "Build candidates (ONNX, ORT-optimised, INT8 dynamic/static, FP16, pruned, distilled, TFLite, TensorRT), "
        "measure each on its runtime, pick the fastest within each device class's constraints, and write a "
        "signed bundle per class plus report.json and report.md.",
    ),
    "simulate": Area(
        "edgefleet.cli.simulate",
        "simulate_command",
        "Run simulated devices that speak the real protocol: availability with last will, reported state, "
        "desired state followed, telemetry windows; prints what happened.",
    ),
}


def load_area(name: str) -> click.Command:
    """The click command of an area of ``AREAS``, its module imported now."""
    area = AREAS[name]
    target = getattr(importlib.import_module(area.module), area.attr)
    if isinstance(target, typer.Typer):
        command: click.Command = typer.main.get_group(target)  # what add_typer makes: no completion options
    else:
        single = typer.Typer(add_completion=False)
        single.command(name)(target)
        command = typer.main.get_command(single)
    command.name = name
    return command


class _Unloaded(click.Command):
    """An area in `edgefleet --help` (and shell completion) before its module is imported."""

    def __init__(self, name: str, area: Area) -> None:
        super().__init__(name, help=area.help)


class _LazyGroup(TyperGroup):
    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        own = dict(self.commands)  # those registered below (demo), after the areas
        self.commands = {name: _Unloaded(name, area) for name, area in AREAS.items()} | own

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        # Every path to running a sub-command comes through here (shell completion too); --help listings
        # only read the placeholders' help.
        name = args[0] if args else None
        if name is not None and isinstance(self.commands.get(name), _Unloaded):
            self.commands[name] = load_area(name)
        return super().resolve_command(ctx, args)


app = typer.Typer(
    cls=_LazyGroup,
    help="edgefleet: signed models on fleets of edge devices.\n\nExit codes: "
    + "; ".join(f"{int(code)} {text}" for code, text in HELP.items()),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", help="Print the installed edgefleet version and exit."),
) -> None:
    """edgefleet: signed models on fleets of edge devices."""
    if version:  # `edgefleet --version` alone is answered by edgefleet.launch before this app loads
        from importlib.metadata import version as installed

        typer.echo(f"edgefleet {installed('edgefleet')}")
        raise typer.Exit()


@app.command()
def demo(
    agents: int = typer.Option(3, min=1, max=10, help="Number of agent processes."),
    keep: bool = typer.Option(False, help="Keep the demo's working folder."),
    broker: str = typer.Option("auto", help="auto (Mosquitto if installed, else amqtt), mosquitto or amqtt."),
) -> None:
    """Run the whole system on this machine: broker, coordinator, agents, a real model rolled out.

    Example: edgefleet demo
    """
    from edgefleet.local.demo import run_demo

    raise typer.Exit(run_demo(agents=agents, keep=keep, broker=broker))


def main() -> None:
    app()
