"""`edgefleet coordinator ...`: serve the control plane, and talk to a running one over REST."""

from __future__ import annotations

import gc
import json
import re
from pathlib import Path
from typing import Any

import typer

from edgefleet.cli.bundle_refs import REF_HELP
from edgefleet.cli.rest import TokenOption, UrlOption, call, segment
from edgefleet.common.exit_codes import ExitCode
from edgefleet.common.output import Format, FormatOption, configure_logging, existing_file, fail, print_data

app = typer.Typer(help="The fleet's control plane.", no_args_is_help=True)


@app.command()
def serve(config: Path = typer.Option(..., "--config", "-c", help="Coordinator config file (TOML).")) -> None:
    """Run the coordinator: REST API, registry and MQTT link, until SIGTERM or SIGINT.

    Example: edgefleet coordinator serve --config coordinator.toml
    """
    import uvicorn

    from edgefleet.cli.errors import fail_with
    from edgefleet.common.errors import EdgefleetError
    from edgefleet.coordinator.api.app import create_app
    from edgefleet.coordinator.config import load_config
    from edgefleet.coordinator.service import Coordinator

    try:
        cfg = load_config(config)
        coordinator = Coordinator(cfg)
        app_ = create_app(coordinator, token=cfg.api.resolved_token())
    except EdgefleetError as exc:  # the config, or what it names, keeps the coordinator from starting
        fail_with(exc, otherwise=ExitCode.CONFIG_INVALID)
    except (OSError, ValueError) as exc:
        fail(str(exc), ExitCode.CONFIG_INVALID)
    configure_logging(cfg.log_level)
    # What is loaded by now lives as long as the process: keep it out of the collector's full passes,
    # which otherwise walk it each time the ingest's batches have made enough new objects (7 us a
    # report unpickled at 2000 a batch, 1 us frozen).
    gc.freeze()
    uvicorn.run(app_, host=cfg.api.host, port=cfg.api.port, log_level=cfg.log_level.lower(), access_log=False)


@app.command("validate-config")
def validate_config(
    path: Path = typer.Argument(..., callback=existing_file, dir_okay=False, help="Coordinator config file (TOML)."),
    fmt: Format = FormatOption,
) -> None:
    """Check a coordinator config file: every key known, every value of its type and range. Prints each problem
    with its key path and reason (never the value: the file holds tokens and passwords); exits 3 on any.

    Example: edgefleet coordinator validate-config /etc/edgefleet/coordinator.toml
    """
    from edgefleet.common.errors import ConfigError
    from edgefleet.coordinator.config import load_config

    try:
        load_config(path)
    except ConfigError as exc:
        fail(f"{exc.path}: invalid coordinator config", ExitCode.CONFIG_INVALID, problems=exc.problems)
    if fmt == Format.json:
        print_data({"config": str(path), "ok": True}, fmt)
    else:
        typer.echo(f"{path}: ok")


@app.command()
def devices(url: str = UrlOption, token: str | None = TokenOption, fmt: Format = FormatOption) -> None:
    """List devices with their availability and reported state.

    Example: edgefleet coordinator devices --format json
    """
    rows = call("GET", url, token, "/api/v1/devices")
    print_data(
        rows
        if fmt == Format.json
        else [{k: v for k, v in r.items() if k not in ("reported", "desired")} for r in rows],
        fmt,
        columns=None
        if fmt == Format.json
        else ["device_id", "device_class", "availability", "status", "active_version", "last_error"],
    )


@app.command()
def bundles(url: str = UrlOption, token: str | None = TokenOption, fmt: Format = FormatOption) -> None:
    """List registered bundles.

    Example: edgefleet coordinator bundles
    """
    rows = call("GET", url, token, "/api/v1/bundles")
    print_data(
        rows,
        fmt,
        columns=None if fmt == Format.json else ["digest", "name", "version", "device_class", "size"],
    )


@app.command()
def bundle(
    ref: str = typer.Argument(..., help=REF_HELP, metavar="BUNDLE"),
    device_class: str | None = typer.Option(
        None, "--device-class", help="With MODEL:VERSION: the version's bundle for this class."
    ),
    url: str = UrlOption,
    token: str | None = TokenOption,
    fmt: Format = FormatOption,
) -> None:
    """Show one registered bundle: digest, name, version, class, size, signer, and its manifest.

    Example: edgefleet coordinator bundle digits:production --device-class rpi4
    """
    query = f"?device_class={segment(device_class)}" if device_class else ""
    found = call("GET", url, token, f"/api/v1/bundles/{segment(ref)}{query}")
    if fmt == Format.json:
        found["manifest"] = json.loads(found["manifest"])  # the signed text, as the JSON object it is
        print_data(found, fmt)
    else:
        print_data({k: v for k, v in found.items() if k != "manifest"}, fmt)


@app.command()
def upload(
    bundle: Path = typer.Argument(..., callback=existing_file, dir_okay=False, help="Signed bundle archive."),
    url: str = UrlOption,
    token: str | None = TokenOption,
    fmt: Format = FormatOption,
) -> None:
    """Upload a signed bundle to the registry (verified there).

    Example: edgefleet coordinator upload digits.bundle
    """
    uploaded = call("POST", url, token, "/api/v1/bundles", content=bundle.read_bytes(), invalid=ExitCode.BUNDLE_INVALID)
    print_data(uploaded, fmt)


@app.command()
def deploy(
    bundle: str = typer.Argument(..., help=REF_HELP, metavar="BUNDLE"),
    device: list[str] = typer.Option(None, "--device", help="Device id; repeatable. Default: all of the class."),
    allow_downgrade: bool = typer.Option(
        False, "--allow-downgrade", help="Even below the min_version the devices' active bundle declares."
    ),
    url: str = UrlOption,
    token: str | None = TokenOption,
    fmt: Format = FormatOption,
) -> None:
    """Make a bundle the desired one for some devices, or every device of its class; MODEL:VERSION gives each
    device the version's bundle for its class.

    Example: edgefleet coordinator deploy digits:1.2.0 --device pi-01

    Example: edgefleet coordinator deploy 3f2a9c1d0b7e4a5b
    """
    body = {"bundle": bundle, "device_ids": device or None, "allow_downgrade": allow_downgrade}
    rows = call("POST", url, token, "/api/v1/deployments", json=body)
    print_data(rows, fmt, columns=None if fmt == Format.json else ["device_id", "bundle_digest", "revision"])


# -- enrollment, revocation, commands (admin and operator) -------------------------------
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _seconds(text: str) -> float:
    """A duration such as 90, 90s, 30m, 1h or 7d, in seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not match or float(match.group(1)) <= 0:
        fail(f"{text!r} is not a duration: use e.g. 90s, 30m, 1h or 7d", ExitCode.USAGE)
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


@app.command("enroll-token")
def enroll_token(
    device_class: str = typer.Option(..., "--device-class", help="Device class of the device that will enroll."),
    device_id: str | None = typer.Option(None, "--device-id", help="Fix the device id; default: chosen at enrollment."),
    ttl: str = typer.Option("1h", "--ttl", help="Lifetime of the token: 90s, 30m, 1h, 7d."),
    url: str = UrlOption,
    token: str | None = TokenOption,
    fmt: Format = FormatOption,
) -> None:
    """Issue a one-time, expiring enrollment token for one device (admin). It is shown only once.

    Example: edgefleet coordinator enroll-token --device-class rpi4 --device-id pi-07 --ttl 1h
    """
    body = {"device_class": device_class, "device_id": device_id, "ttl_s": _seconds(ttl)}
    print_data(call("POST", url, token, "/api/v1/enroll-tokens", json=body), fmt)


@app.command()
def identities(url: str = UrlOption, token: str | None = TokenOption, fmt: Format = FormatOption) -> None:
    """List enrolled and revoked device identities.

    Example: edgefleet coordinator identities --format json
    """
    rows = call("GET", url, token, "/api/v1/identities")
    columns = ["device_id", "device_class", "status", "enrolled_at", "revoked_at"]
    print_data(rows, fmt, columns=None if fmt == Format.json else columns)


@app.command()
def revoke(
    device_id: str = typer.Argument(..., help="The device to cut off."),
    url: str = UrlOption,
    token: str | None = TokenOption,
    fmt: Format = FormatOption,
) -> None:
    """Revoke a device (admin): remove its broker credentials and reload the broker, which disconnects it.

    Example: edgefleet coordinator revoke pi-07
    """
    print_data(call("DELETE", url, token, f"/api/v1/devices/{device_id}"), fmt)


@app.command()
def command(
    device_id: str = typer.Argument(..., help="Target device."),
    name: str = typer.Argument(..., help="Command name, e.g. ping or report_state."),
    arg: list[str] = typer.Option(None, "--arg", help="KEY=VALUE, repeatable; VALUE is read as JSON if it parses."),
    url: str = UrlOption,
    token: str | None = TokenOption,
    fmt: Format = FormatOption,
) -> None:
    """Send a command, signed by the coordinator's command key, to a device (operator).

    Example: edgefleet coordinator command pi-07 report_state
    """
    args: dict[str, Any] = {}
    for item in arg or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            fail(f"--arg {item!r}: expected KEY=VALUE", ExitCode.USAGE)
        try:
            args[key] = json.loads(value)
        except ValueError:
            args[key] = value
    body = {"name": name, "args": args}
    print_data(call("POST", url, token, f"/api/v1/devices/{device_id}/commands", json=body), fmt)


token_app = typer.Typer(help="API tokens with roles: admin, operator, read-only (admin only).", no_args_is_help=True)
app.add_typer(token_app, name="token")
_ROLES = ("admin", "operator", "read-only")


@token_app.command("create")
def token_create(
    role: str = typer.Option(..., "--role", help="admin, operator (upload, deploy, commands) or read-only (GET)."),
    name: str = typer.Option("cli", "--name", help="Who or what uses the token, e.g. ci."),
    ttl: str | None = typer.Option(None, "--ttl", help="Lifetime, e.g. 30d; default: until revoked."),
    url: str = UrlOption,
    token: str | None = TokenOption,
    fmt: Format = FormatOption,
) -> None:
    """Create an API token; only its hash is stored, so copy it from this output.

    Example: edgefleet coordinator token create --role operator --name ci
    """
    if role not in _ROLES:
        fail(f"unknown role {role!r}: use {', '.join(_ROLES)}", ExitCode.USAGE)
    body = {"role": role, "name": name, "ttl_s": _seconds(ttl) if ttl else None}
    print_data(call("POST", url, token, "/api/v1/tokens", json=body), fmt)


@token_app.command("list")
def token_list(url: str = UrlOption, token: str | None = TokenOption, fmt: Format = FormatOption) -> None:
    """List API tokens (never the tokens themselves).

    Example: edgefleet coordinator token list
    """
    rows = call("GET", url, token, "/api/v1/tokens")
    columns = ["token_id", "name", "role", "created_at", "expires_at", "revoked_at"]
    print_data(rows, fmt, columns=None if fmt == Format.json else columns)


@token_app.command("revoke")
def token_revoke(
    token_id: str = typer.Argument(..., help="The token's id from `token list`."),
    url: str = UrlOption,
    token: str | None = TokenOption,
    fmt: Format = FormatOption,
) -> None:
    """Revoke an API token at once.

    Example: edgefleet coordinator token revoke 3fa2b1c9d0e1
    """
    print_data(call("DELETE", url, token, f"/api/v1/tokens/{token_id}"), fmt)
