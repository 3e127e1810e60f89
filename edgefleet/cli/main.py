"""The `edgefleet` command: sub-commands grouped by area."""

from __future__ import annotations

import typer

from edgefleet.cli.agent import app as agent_app
from edgefleet.cli.bundle import bundle_app, keys_app
from edgefleet.cli.campaign import app as campaign_app
from edgefleet.cli.compress import compress_command
from edgefleet.cli.coordinator import app as coordinator_app
from edgefleet.cli.rollout import app as rollout_app
from edgefleet.cli.simulate import simulate_command
from edgefleet.common.exit_codes import HELP

app = typer.Typer(
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


app.add_typer(agent_app, name="agent")
app.add_typer(coordinator_app, name="coordinator")
app.add_typer(bundle_app, name="bundle")
app.add_typer(keys_app, name="keys")
app.add_typer(rollout_app, name="rollout")
app.add_typer(campaign_app, name="campaign")
app.command("compress")(compress_command)
app.command("simulate")(simulate_command)


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
