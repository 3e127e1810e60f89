"""`edgefleet agent ...`: run the daemon, validate its config, ask a running agent what it serves, diagnose one."""

from __future__ import annotations

from pathlib import Path

import grpc
import typer

from edgefleet.agent.config import AgentConfig, load_config
from edgefleet.agent.device_class import detect_device_class, load_device_class, probe_hardware
from edgefleet.common.errors import ConfigError
from edgefleet.common.exit_codes import ExitCode
from edgefleet.common.output import Format, FormatOption, existing_file, fail, print_data
from edgefleet.firmware_configs import CONFIG_DIR
from edgefleet.protocol.errors import ProtocolError

app = typer.Typer(help="The daemon on each edge device.", no_args_is_help=True)


@app.command()
def run(config: Path = typer.Option(..., "--config", "-c", help="Agent config file (TOML).")) -> None:
    """Run the agent until SIGTERM or SIGINT; SIGHUP reloads the config.

    Example: edgefleet agent run --config /etc/edgefleet/agent.toml
    """
    from edgefleet.agent.run import run_daemon

    code = run_daemon(config)
    if code:
        raise typer.Exit(code)


@app.command("validate-config")
def validate_config(
    path: Path = typer.Argument(..., help="Agent config file (TOML)."),
    as_user: str | None = typer.Option(
        None, "--as-user", help="Check the files as the user the agent runs as (the packaged unit's: edgefleet)."
    ),
) -> None:
    """Check a config file and what the agent needs at start: each file it names exists and is readable by the
    user it runs as, the keys parse, the data dir and the socket's folder are writable. Prints each problem
    with its key path, value and reason; exits 3 on any.

    Example: edgefleet agent validate-config /etc/edgefleet/agent.toml --as-user edgefleet
    """
    from edgefleet.agent.preflight import Account, startup_problems

    try:
        account = Account.named(as_user) if as_user else Account.current()
    except KeyError:
        fail(f"no user {as_user!r} on this system", ExitCode.USAGE)
    try:
        config = load_config(path)
        device_class = load_device_class(config.device_class, config.device_class_dir or CONFIG_DIR)
    except ConfigError as exc:
        for problem in exc.problems:
            typer.echo(f"{exc.path}: {problem}", err=True)
        raise typer.Exit(int(ExitCode.CONFIG_INVALID)) from None
    problems = startup_problems(config, account)
    for problem in problems:
        typer.echo(f"{path}: {problem}", err=True)
    if problems:
        raise typer.Exit(int(ExitCode.CONFIG_INVALID))
    typer.echo(f"{path}: ok for {account.name} (device class {device_class.name}: {device_class.description})")


@app.command()
def enroll(
    coordinator: str = typer.Option(..., "--coordinator", help="The coordinator's REST API, e.g. https://fleet:8080."),
    token: str = typer.Option(
        ..., "--token", envvar="EDGEFLEET_ENROLL_TOKEN", help="One-time enrollment token (from enroll-token)."
    ),
    data_dir: Path = typer.Option(..., "--data-dir", help="The agent's data folder for the new config."),
    out: Path = typer.Option(..., "--out", "-o", help="Agent config to write; key and password files go beside it."),
    broker_url: str | None = typer.Option(None, "--broker-url", help="Override the broker URL the coordinator gives."),
    device_id: str | None = typer.Option(None, "--device-id", help="Wished-for id, if the token does not fix one."),
    coordinator_ca: Path | None = typer.Option(
        None, "--coordinator-ca", callback=existing_file, dir_okay=False, help="CA bundle for an https coordinator."
    ),
    force: bool = typer.Option(False, "--force", help="Replace an existing config and password file."),
    service_user: str | None = typer.Option(
        None, "--service-user",
        help="User the agent runs as: the password file becomes readable to its group, the data dir its own. "
        "Default, as root: edgefleet when that user exists (the packaged unit's).",
    ),
    socket: Path | None = typer.Option(
        None, "--socket",
        help="The local API's socket ([api] socket). Default with a service user: /run/edgefleet/agent.sock "
        "(the unit's RuntimeDirectory).",
    ),
    fmt: Format = FormatOption,
) -> None:
    """Exchange an enrollment token for a device identity and write a complete agent config.

    The package's example config (device_id still "<device-id>") is replaced without --force. Run as root
    on a packaged device, the files are made for the unit's user edgefleet.

    Example: edgefleet agent enroll --coordinator http://fleet:8080 --token efe_...
    --data-dir /var/lib/edgefleet --out /etc/edgefleet/agent.toml
    """
    from edgefleet.agent.enrollment import (
        PACKAGED_SOCKET,
        EnrollmentError,
        ServiceUser,
        replaceable_files,
        request_enrollment,
        write_agent_config,
    )

    existing = replaceable_files(out)
    if existing and not force:  # checked before the token is spent
        fail(f"{', '.join(map(str, existing))} exist(s); pass --force to replace", ExitCode.USAGE)
    try:
        user = ServiceUser(service_user) if service_user else ServiceUser.packaged()
    except EnrollmentError as exc:
        fail(exc.reason, ExitCode.USAGE)
    if socket is None and user is not None:
        socket = PACKAGED_SOCKET
    try:
        response = request_enrollment(coordinator, token, device_id=device_id, ca_file=coordinator_ca)
    except EnrollmentError as exc:
        if exc.status is None:
            fail(exc.reason, ExitCode.UNREACHABLE)
        fail(f"enrollment refused ({exc.status}): {exc.reason}", ExitCode.ERROR)
    try:
        config = write_agent_config(
            response, out=out, data_dir=data_dir, broker_url=broker_url, service_user=user, socket=socket
        )
    except (ConfigError, ProtocolError, OSError) as exc:
        # The token is spent by now; the device id tells the operator which identity to revoke.
        fail(
            f"enrolled as {response.device_id!r} but could not write the config: {exc}; "
            "revoke that device and enroll with a new token",
            ExitCode.CONFIG_INVALID,
        )
    for note in response.notes:
        typer.echo(f"note: {note}", err=True)
    print_data(
        {
            "device_id": config.device_id,
            "device_class": config.device_class,
            "config": str(out),
            "broker": config.broker.url,
            "broker_auth": "managed" if response.broker.managed else "unmanaged",
            "command_keys": len(response.command_keys),
            "service_user": user.name if user else None,
            "socket": str(config.socket_path),
        },
        fmt,
    )


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


PACKAGED_CONFIG = Path("/etc/edgefleet/agent.toml")


def _load_or_fail(config: Path) -> AgentConfig:
    try:
        return load_config(config)
    except ConfigError as exc:
        fail(f"{exc.path}: invalid config", ExitCode.CONFIG_INVALID, problems=exc.problems)


@app.command()
def status(
    target: str | None = typer.Option(
        None, "--target", help="unix:///path/agent.sock or 127.0.0.1:PORT. Default: the socket of --config, "
        "else the packaged /run/edgefleet/agent.sock.",
    ),
    config: Path | None = typer.Option(
        None, "--config", "-c", callback=existing_file, dir_okay=False, help="Agent config whose [api] socket to ask."
    ),
    fmt: Format = FormatOption,
) -> None:
    """Show the model a running agent serves (its local ModelInfo).

    Example: edgefleet agent status --config /etc/edgefleet/agent.toml --format json
    """
    from edgefleet.agent.enrollment import PACKAGED_SOCKET
    from edgefleet.agent.serving.client import InferenceClient

    if target is None:
        target = f"unix://{_load_or_fail(config).socket_path if config else PACKAGED_SOCKET}"
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


@app.command()
def doctor(
    config: Path = typer.Option(
        PACKAGED_CONFIG, "--config", "-c", callback=existing_file, dir_okay=False, help="Agent config file (TOML)."
    ),
    fmt: Format = FormatOption,
) -> None:
    """Diagnose the agent: each check ok or a problem with why.

    Checks its local API, the broker (a real login with its credentials and TLS), the coordinator's presence,
    the desired state and whether it is active, the active bundle's signature and hashes, the runtime chain
    (why each runtime is skipped), the outbox, the clock against the coordinator's. Changes none of the agent's
    files. Exit 0 when all are ok; else 6 when the broker or the coordinator is not reached (a refused login
    included), else 4 when the active bundle fails verification, else 1; 3 for an invalid config.

    Example: edgefleet agent doctor --config /etc/edgefleet/agent.toml --format json
    """
    from edgefleet.agent.doctor import Trouble, run_checks

    checks = run_checks(_load_or_fail(config))
    codes = {Trouble.UNREACHABLE: ExitCode.UNREACHABLE, Trouble.BUNDLE: ExitCode.BUNDLE_INVALID,
             Trouble.STATE: ExitCode.ERROR}  # by precedence  # fmt: skip
    rows = [check.as_dict() for check in checks]
    if fmt == Format.json:
        print_data({"config": str(config), "ok": all(c.ok for c in checks), "checks": rows}, fmt)
    else:
        print_data(rows, fmt, columns=["check", "status", "detail"])
    found = {c.trouble or Trouble.STATE for c in checks if not c.ok}
    for trouble, code in codes.items():
        if trouble in found:
            raise typer.Exit(int(code))
