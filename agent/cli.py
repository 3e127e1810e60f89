"""`edgefleet agent ...`: run the daemon, validate its config, ask a running agent what it serves."""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from types import FrameType

import grpc
import typer

from agent.config import load_config
from agent.device_class import detect_device_class, load_device_class, probe_hardware
from agent.errors import ConfigError
from edgefleet.exit_codes import ExitCode
from edgefleet.output import Format, FormatOption, configure_logging, fail, print_data
from firmware_configs import CONFIG_DIR
from protocol.errors import ProtocolError

app = typer.Typer(help="The daemon on each edge device.", no_args_is_help=True)


@app.command()
def run(config: Path = typer.Option(..., "--config", "-c", help="Agent config file (TOML).")) -> None:
    """Run the agent until SIGTERM or SIGINT.

    Example: edgefleet agent run --config /etc/edgefleet/agent.toml
    """
    from agent.daemon import Agent

    try:
        cfg = load_config(config)
    except ConfigError as exc:
        fail(str(exc), ExitCode.CONFIG_INVALID)
    configure_logging(cfg.log_level)
    try:
        agent = Agent(cfg)
    except ConfigError as exc:
        fail(str(exc), ExitCode.CONFIG_INVALID)
    except (OSError, ProtocolError) as exc:
        fail(f"cannot start: {exc}", ExitCode.CONFIG_INVALID)

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        agent.request_stop()

    def on_hangup(_signum: int, _frame: FrameType | None) -> None:
        try:
            agent.reload(load_config(config))
        except ConfigError as exc:
            logging.getLogger("agent").error("config reload refused, keeping the running config: %s", exc)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_hangup)
    agent.start()
    agent.wait()
    agent.stop()


@app.command("validate-config")
def validate_config(path: Path = typer.Argument(..., help="Agent config file (TOML).")) -> None:
    """Check a config file; print each problem with its key path, value and reason.

    Example: edgefleet agent validate-config agent.toml
    """
    try:
        config = load_config(path)
        device_class = load_device_class(config.device_class, config.device_class_dir or CONFIG_DIR)
    except ConfigError as exc:
        for problem in exc.problems:
            typer.echo(f"{exc.path}: {problem}", err=True)
        raise typer.Exit(int(ExitCode.CONFIG_INVALID)) from None
    typer.echo(f"{path}: ok (device class {device_class.name}: {device_class.description})")


@app.command("detect-class")
def detect_class(fmt: Format = FormatOption) -> None:
    """Detect this device's class from its device tree, Tegra release and architecture.

    Example: edgefleet agent detect-class --format json
    """
    probe = probe_hardware()
    name = detect_device_class(probe)
    print_data(probe.model_dump() | {"device_class": name}, fmt)
    if name is None:
        raise typer.Exit(int(ExitCode.NOT_FOUND))


@app.command()
def status(
    target: str = typer.Option(..., "--target", help="unix:///path/agent.sock or 127.0.0.1:PORT"),
    fmt: Format = FormatOption,
) -> None:
    """Show the model a running agent serves (its local ModelInfo).

    Example: edgefleet agent status --target unix:///var/lib/edgefleet/agent.sock --format json
    """
    from agent.client import InferenceClient

    with InferenceClient(target) as client:
        try:
            info = client.model_info()
        except grpc.RpcError as exc:
            fail(f"{target}: {exc.details()}", ExitCode.UNREACHABLE)
    print_data(
        {
            "loaded": info.loaded,
            "model": info.model_name,
            "version": info.model_version,
            "bundle_digest": info.bundle_digest,
            "device_class": info.device_class,
            "runtime": info.runtime,
            "activated_at": info.activated_at,
        },
        fmt,
    )
