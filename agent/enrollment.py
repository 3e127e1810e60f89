"""Enrollment, device side: exchange a one-time token for an identity and write a complete agent config.

The request and response are the REST contract of ``POST /api/v1/enroll`` (edgefleet.protocol.enrollment).
Only the standard library speaks HTTP, so a core install can enroll.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import re
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from edgefleet.agent.config import AgentConfig, parse_config
from edgefleet.agent.device_class import load_device_class
from edgefleet.agent.errors import AgentError
from edgefleet.agent.mqtt.control import FLOOR_FILE
from edgefleet.protocol.enrollment import ENROLL_PATH, EnrollRequest, EnrollResponse
from edgefleet.protocol.signing import key_id, load_public_key

__all__ = [
    "PACKAGED_SOCKET",
    "SERVICE_USER",
    "EnrollmentError",
    "ServiceUser",
    "enrolled_files",
    "is_placeholder_config",
    "replaceable_files",
    "request_enrollment",
    "write_agent_config",
]

SERVICE_USER = "edgefleet"  # the packaged unit's User= and Group=
PACKAGED_SOCKET = Path("/run/edgefleet/agent.sock")  # in the unit's RuntimeDirectory=

class EnrollmentError(AgentError):
    """Enrollment failed; ``status`` is the coordinator's HTTP status, None when it was not reached."""

    def __init__(self, reason: str, *, status: int | None = None) -> None:
        super().__init__(reason)
        self.status = status


def request_enrollment(
    coordinator_url: str,
    token: str,
    *,
    device_id: str | None = None,
    ca_file: Path | None = None,
    timeout_s: float = 30.0,
) -> EnrollResponse:
    """POST the token to the coordinator; return its answer or raise EnrollmentError with the reason."""
    body = EnrollRequest(token=token, device_id=device_id).model_dump_json(exclude_none=True).encode()
    request = urllib.request.Request(
        coordinator_url.rstrip("/") + ENROLL_PATH,
        data=body,
        headers={"Content-Type": "application/json", "Accept": "application/json"},
        method="POST",
    )
    context = ssl.create_default_context(cafile=str(ca_file)) if ca_file else None
    try:
        with urllib.request.urlopen(request, timeout=timeout_s, context=context) as response:
            raw = response.read()
    except urllib.error.HTTPError as exc:
        raise EnrollmentError(_detail(exc.read()) or exc.reason, status=exc.code) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        raise EnrollmentError(f"{coordinator_url}: {reason}") from None
    try:
        return EnrollResponse.model_validate_json(raw)
    except ValidationError as exc:
        raise EnrollmentError(f"the coordinator's enrollment answer is invalid: {exc.errors()[0]['msg']}") from None


def _detail(raw: bytes) -> str:
    try:
        detail = json.loads(raw).get("detail")
    except (ValueError, AttributeError):
        return raw.decode(errors="replace")[:500]
    return detail if isinstance(detail, str) else json.dumps(detail)


def enrolled_files(out: Path) -> list[Path]:
    """Files ``write_agent_config`` creates beside ``out`` apart from the key files (to refuse overwriting)."""
    return [out, out.parent / "broker.pass"]


def is_placeholder_config(path: Path) -> bool:
    """Whether ``path`` is the example config the package ships (its device id still ``"<device-id>"``):
    no device's identity, so enrollment may write over it."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return False
    return re.search(r'^\s*device_id\s*=\s*"<[^"]*>"', text, re.MULTILINE) is not None


def replaceable_files(out: Path) -> list[Path]:
    """Of ``enrolled_files(out)``, those that exist and hold an identity (enrollment would replace them)."""
    if is_placeholder_config(out):
        return []
    return [p for p in enrolled_files(out) if p.exists()]


class ServiceUser:
    """The user (and its group) the agent runs as; the files it must read are made readable to its group."""

    def __init__(self, name: str) -> None:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise EnrollmentError(f"no user {name!r} on this system (the agent's service user)") from None
        self.name, self.uid, self.gid = name, entry.pw_uid, entry.pw_gid
        self.group = grp.getgrgid(self.gid).gr_name

    @classmethod
    def packaged(cls) -> ServiceUser | None:
        """The package's service user, when it exists and this runs as root (the packaged install)."""
        if os.geteuid() != 0:
            return None
        try:
            return cls(SERVICE_USER)
        except EnrollmentError:
            return None


def _write(path: Path, text: str, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as fh:
        os.fchmod(fh.fileno(), mode)  # O_CREAT's mode does not apply to an existing file
        fh.write(text)


def _pem_files(folder: Path, kind: str, pems: list[str]) -> list[str]:
    names = []
    for pem in pems:
        kid = key_id(load_public_key(pem.encode(), source=f"{kind} key from the coordinator"))
        name = f"{kind}-{kid}.pem"
        _write(folder / name, pem, 0o644)
        names.append(name)
    return names


def write_agent_config(
    response: EnrollResponse,
    *,
    out: Path,
    data_dir: Path,
    broker_url: str | None = None,
    service_user: ServiceUser | None = None,
    socket: Path | None = None,
) -> AgentConfig:
    """Write the broker password, the keys as PEM files beside ``out``, then ``out`` itself.

    The password file is 0600 for the user writing it; with ``service_user`` (the agent runs as another
    user, as the packaged unit does) it is 0640 in that user's group, and ``data_dir`` belongs to that user
    (0700). ``socket`` is the local API's socket (``[api] socket``). Paths in the config are relative to its
    folder except ``data_dir`` and ``socket``. The config is validated exactly as ``edgefleet agent
    validate-config`` does before it is written; ConfigError if not.
    """
    folder = out.resolve().parent
    folder.mkdir(parents=True, exist_ok=True)
    broker: dict[str, Any] = {"url": broker_url or response.broker.url, "username": response.broker.username}
    if response.broker.password is not None:
        secret = folder / "broker.pass"
        _write(secret, response.broker.password + "\n", 0o640 if service_user else 0o600)
        if service_user is not None:
            os.chown(secret, -1, service_user.gid)
        broker["password_file"] = "broker.pass"
    if response.broker.ca_pem:
        _write(folder / "broker-ca.pem", response.broker.ca_pem, 0o644)
        broker["ca_file"] = "broker-ca.pem"
    raw: dict[str, Any] = {
        "device_id": response.device_id,
        "device_class": response.device_class,
        "data_dir": str(data_dir.resolve()),
        "trusted_keys": _pem_files(folder, "trusted", response.trusted_keys),
    }
    command_keys = _pem_files(folder, "command", response.command_keys)
    # Listed once this agent's config knows the field (see agent/mqtt/commands.py); it refuses unknown keys.
    if "command_keys" in AgentConfig.model_fields:
        raw["command_keys"] = command_keys
    raw["broker"] = broker
    if socket is not None:
        raw["api"] = {"socket": str(socket)}
    config = parse_config(raw, source=str(out), base=folder)
    load_device_class(config.device_class)
    data_dir.mkdir(parents=True, exist_ok=True)
    # A new enrollment may be with another coordinator, whose revisions start again from 1.
    (data_dir / FLOOR_FILE).unlink(missing_ok=True)
    if service_user is not None:
        os.chown(data_dir, service_user.uid, service_user.gid)
        data_dir.chmod(0o700)
    _write(out, _toml(raw), 0o644)
    return config


def _toml(tables: dict[str, Any]) -> str:
    def value(v: Any) -> str:
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return json.dumps(v)  # a JSON string is a valid TOML basic string

    lines = ["# Written by `edgefleet agent enroll`."]
    lines += [f"{k} = {value(v)}" for k, v in tables.items() if not isinstance(v, dict)]
    for name, table in tables.items():
        if isinstance(table, dict):
            lines += ["", f"[{name}]", *(f"{k} = {value(v)}" for k, v in table.items())]
    return "\n".join(lines) + "\n"
