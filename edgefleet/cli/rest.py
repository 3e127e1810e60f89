"""The REST client every command that talks to a running coordinator uses, and its one status table.

Only the standard library speaks HTTP here, so the core install (a device, the .deb) can run every
command. ``call`` returns the decoded JSON body or ends the command with the exit code its HTTP
status maps to (``EXIT_FOR_STATUS``), printing the coordinator's ``detail``.
"""

from __future__ import annotations

import json as _json  # `json` is call()'s keyword, as in httpx
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, NoReturn

import typer

from edgefleet.common.exit_codes import ExitCode
from edgefleet.common.output import fail

__all__ = ["EXIT_FOR_STATUS", "TokenOption", "UrlOption", "call", "segment"]

UrlOption = typer.Option("http://127.0.0.1:8080", "--url", envvar="EDGEFLEET_URL", help="Coordinator REST API.")
TokenOption = typer.Option(None, "--token", envvar="EDGEFLEET_TOKEN", help="API bearer token.")

# The coordinator's statuses (edgefleet.coordinator.api.app maps its errors to them) -> exit codes.
EXIT_FOR_STATUS = {
    401: ExitCode.UNAUTHORIZED,  # no token, or one the coordinator does not know (revoked, expired)
    403: ExitCode.UNAUTHORIZED,  # a token whose role is not enough
    404: ExitCode.NOT_FOUND,
    # A request that cannot be done as asked in the fleet's state: a digest prefix that starts several digests,
    # MODEL:VERSION without a bundle for a device's class, a rollout none of whose devices is online.
    409: ExitCode.USAGE,
    502: ExitCode.UNREACHABLE,  # the coordinator could not reach the broker (reloading its auth)
    503: ExitCode.UNREACHABLE,  # ... or could not send a command over it
}
TIMEOUT_S = 60.0


def call(
    method: str,
    url: str,
    token: str | None,
    path: str,
    *,
    json: Any = None,  # the body, as JSON
    content: bytes | None = None,
    invalid: ExitCode = ExitCode.USAGE,
) -> Any:
    """One request; ``invalid`` is the exit code of a 422 (what was sent does not validate): a bundle upload
    says BUNDLE_INVALID, a spec file CONFIG_INVALID, anything else from the command line USAGE."""
    headers = {"Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = content
    if json is not None:
        data = _json.dumps(json).encode()
        headers["Content-Type"] = "application/json"
    elif content is not None:
        headers["Content-Type"] = "application/octet-stream"
    request = urllib.request.Request(url.rstrip("/") + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    except (urllib.error.URLError, OSError, ValueError) as exc:  # refused, DNS, TLS, timeout, a bad URL
        reason = getattr(exc, "reason", exc)
        fail(f"{url}: cannot reach the coordinator ({reason})", ExitCode.UNREACHABLE)
    decoded = _decode(body, url, status)
    if status >= 400:
        code = ExitCode(invalid) if status == 422 else EXIT_FOR_STATUS.get(status, ExitCode.ERROR)
        fail(f"{status}: {_detail(decoded)}", code)
    return decoded


def segment(text: str) -> str:
    """``text`` as one segment of a URL path: a device id, a bundle reference such as digits:1.0.0+fl.3."""
    return urllib.parse.quote(text, safe="")


def _decode(body: bytes, url: str, status: int) -> Any:
    if not body:
        return None
    try:
        return _json.loads(body)
    except (UnicodeDecodeError, ValueError):
        _not_a_coordinator(url, status, body)


def _not_a_coordinator(url: str, status: int, body: bytes) -> NoReturn:
    sample = body[:80].decode("utf-8", errors="replace")
    fail(f"{url} answered {status} with something that is not JSON ({sample!r}): is it an edgefleet coordinator?",
         ExitCode.UNREACHABLE)  # fmt: skip


def _detail(decoded: Any) -> str:
    detail = decoded.get("detail") if isinstance(decoded, dict) else decoded
    return detail if isinstance(detail, str) else _json.dumps(detail)
