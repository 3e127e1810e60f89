"""The REST client every command that talks to a running coordinator uses, and its one status table.

``call`` returns the decoded JSON body or ends the command with the exit code the HTTP status maps
to (``EXIT_FOR_STATUS``), printing the coordinator's ``detail``.
"""

from __future__ import annotations

import json
from typing import Any

import typer

from edgefleet.common.exit_codes import ExitCode
from edgefleet.common.output import fail

__all__ = ["EXIT_FOR_STATUS", "TokenOption", "UrlOption", "call"]

UrlOption = typer.Option("http://127.0.0.1:8080", "--url", envvar="EDGEFLEET_URL", help="Coordinator REST API.")
TokenOption = typer.Option(None, "--token", envvar="EDGEFLEET_TOKEN", help="API bearer token.")

# The coordinator's statuses (edgefleet.coordinator.api.app maps its errors to them) -> exit codes.
EXIT_FOR_STATUS = {
    404: ExitCode.NOT_FOUND,
    422: ExitCode.BUNDLE_INVALID,  # invalid input: a bundle that fails verification above all
    502: ExitCode.UNREACHABLE,  # the coordinator could not reach the broker (reloading its auth)
    503: ExitCode.UNREACHABLE,  # ... or could not send a command over it
}


def call(method: str, url: str, token: str | None, path: str, **kwargs: Any) -> Any:
    import httpx

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        response = httpx.request(method, url.rstrip("/") + path, headers=headers, timeout=60, **kwargs)
    except httpx.HTTPError as exc:
        fail(f"{url}: {exc}", ExitCode.UNREACHABLE)
    if response.status_code >= 400:
        code = EXIT_FOR_STATUS.get(response.status_code, ExitCode.ERROR)
        detail = _detail(response)
        fail(detail if code is not ExitCode.ERROR else f"{response.status_code}: {detail}", code)
    return response.json()


def _detail(response: Any) -> str:
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        return str(response.text)
    return detail if isinstance(detail, str) else json.dumps(detail)
