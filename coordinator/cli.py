"""`edgefleet coordinator ...`: serve the control plane, and talk to a running one over REST."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from edgefleet.exit_codes import ExitCode
from edgefleet.output import Format, FormatOption, configure_logging, fail, print_data

app = typer.Typer(help="The fleet's control plane.", no_args_is_help=True)

UrlOption = typer.Option("http://127.0.0.1:8080", "--url", envvar="EDGEFLEET_URL", help="Coordinator REST API.")
TokenOption = typer.Option(None, "--token", envvar="EDGEFLEET_TOKEN", help="API bearer token.")


@app.command()
def serve(config: Path = typer.Option(..., "--config", "-c", help="Coordinator config file (TOML).")) -> None:
    """Run the coordinator: REST API, registry and MQTT link, until SIGTERM or SIGINT.

    Example: edgefleet coordinator serve --config coordinator.toml
    """
    import uvicorn

    from coordinator.api import create_app
    from coordinator.config import load_config
    from coordinator.errors import Rejected
    from coordinator.service import Coordinator

    try:
        cfg = load_config(config)
        coordinator = Coordinator(cfg)
    except (Rejected, OSError, ValueError) as exc:
        fail(str(exc), ExitCode.CONFIG_INVALID)
    configure_logging(cfg.log_level)
    app_ = create_app(coordinator, token=cfg.api.resolved_token())
    uvicorn.run(app_, host=cfg.api.host, port=cfg.api.port, log_level=cfg.log_level.lower(), access_log=False)


def _call(method: str, url: str, token: str | None, path: str, **kwargs: Any) -> Any:
    import httpx

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        response = httpx.request(method, url.rstrip("/") + path, headers=headers, timeout=60, **kwargs)
    except httpx.HTTPError as exc:
        fail(f"{url}: {exc}", ExitCode.UNREACHABLE)
    if response.status_code == 404:
        fail(response.json().get("detail", "not found"), ExitCode.NOT_FOUND)
    if response.status_code == 422:
        fail(str(response.json().get("detail")), ExitCode.BUNDLE_INVALID)
    if response.status_code >= 400:
        fail(f"{response.status_code}: {response.text}", ExitCode.ERROR)
    return response.json()


@app.command()
def devices(url: str = UrlOption, token: str | None = TokenOption, fmt: Format = FormatOption) -> None:
    """List devices with their availability and reported state.

    Example: edgefleet coordinator devices --format json
    """
    rows = _call("GET", url, token, "/api/v1/devices")
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
    rows = _call("GET", url, token, "/api/v1/bundles")
    print_data(
        rows,
        fmt,
        columns=None if fmt == Format.json else ["digest", "name", "version", "device_class", "size"],
    )


@app.command()
def upload(
    bundle: Path = typer.Argument(..., exists=True, dir_okay=False, help="Signed bundle archive."),
    url: str = UrlOption,
    token: str | None = TokenOption,
    fmt: Format = FormatOption,
) -> None:
    """Upload a signed bundle to the registry (verified there).

    Example: edgefleet coordinator upload digits.bundle
    """
    print_data(_call("POST", url, token, "/api/v1/bundles", content=bundle.read_bytes()), fmt)


@app.command()
def deploy(
    digest: str = typer.Argument(..., help="Bundle digest."),
    device: list[str] = typer.Option(None, "--device", help="Device id; repeatable. Default: all of the class."),
    url: str = UrlOption,
    token: str | None = TokenOption,
    fmt: Format = FormatOption,
) -> None:
    """Make a bundle the desired one for some devices, or every device of its class.

    Example: edgefleet coordinator deploy 3f2a... --device pi-01
    """
    body = {"bundle_digest": digest, "device_ids": device or None}
    print_data(_call("POST", url, token, "/api/v1/deployments", json=body), fmt)
