"""Mosquitto's password and ACL files, rendered by the coordinator, and the broker reload.

The coordinator owns both files and rewrites them whole from its store: its own user with every
right under ``edgefleet/v1/#``, its telemetry connection's user (``<user>-ingest``, same password,
may only read telemetry; see coordinator/telemetry/supervisor.py), and one password entry per enrolled device
whose rights come from ``pattern`` lines (``protocol.topics.device_acl_patterns``: username = device
id, own subtree only).

Revocation on Mosquitto 2.0 (tested against 2.0.11 in tests/test_broker_auth.py): on SIGHUP the
broker re-reads both files and disconnects every connected client whose username and password no
longer verify, and refuses its reconnects; ACL changes reach connected clients at once because the
ACL is checked on every publish and delivery. Removing a device's password entry and reloading is
therefore enough to cut it off; no broker restart is needed. Mosquitto treats that drop like a clean
disconnect and does not publish the device's last will, so the coordinator announces it offline.
Recommended broker setting: ``use_username_as_clientid true``, or any device can take over another
device's client id (and persistent session) and knock it offline.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import secrets
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path

from edgefleet.coordinator.config import BrokerAuthConfig
from edgefleet.coordinator.errors import CoordinatorError
from edgefleet.coordinator.telemetry.supervisor import ingest_username
from edgefleet.protocol.topics import PREFIX, Channel, channel_subscription, device_acl_patterns

__all__ = [
    "BrokerAuth",
    "BrokerAuthError",
    "check_password",
    "hash_password",
    "render_acl_file",
    "render_password_file",
]

log = logging.getLogger(__name__)

# Mosquitto 2.0's "$7$" format: PBKDF2-HMAC-SHA512, 101 iterations, 12-byte salt, base64 fields.
_ITERATIONS = 101
_SALT_BYTES = 12
_HEADER = "# Written by the edgefleet coordinator from its fleet store; changes here are overwritten.\n"


class BrokerAuthError(CoordinatorError):
    """The broker's password or ACL file could not be written, or the broker could not be reloaded."""


def _pbkdf2(password: str, salt: bytes, iterations: int) -> bytes:
    return hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)


def hash_password(password: str, *, tool: str | None = "mosquitto_passwd") -> str:
    """Mosquitto's ``$7$`` hash of ``password``, made by the ``mosquitto_passwd`` tool when installed.

    The tool hashes a plaintext file in place (``-U``), so the password never appears on a command
    line. It cuts a password at ``:``; such passwords, and hosts without the tool, get the same
    format computed here.
    """
    if not password or "\n" in password:
        raise BrokerAuthError("a broker password must be non-empty and a single line")
    exe = shutil.which(tool) if tool else None
    if exe is None or ":" in password:
        salt = secrets.token_bytes(_SALT_BYTES)
        digest = _pbkdf2(password, salt, _ITERATIONS)
        return f"$7${_ITERATIONS}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"
    with tempfile.TemporaryDirectory(prefix="edgefleet-pw-") as tmp:
        path = Path(tmp) / "passwd"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(f"user:{password}\n")
        try:
            result = subprocess.run([exe, "-U", str(path)], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise BrokerAuthError(f"{exe} failed: {exc}") from None
        if result.returncode != 0:
            raise BrokerAuthError(f"{exe} -U failed with {result.returncode}: {result.stderr.strip()}")
        hashed = path.read_text().strip().partition(":")[2]
    if not hashed.startswith("$"):
        raise BrokerAuthError(f"{exe} wrote an unexpected password line")
    return hashed


def check_password(password: str, hashed: str) -> bool:
    """Whether a Mosquitto ``$7$`` hash is of ``password`` (False for any other format)."""
    parts = hashed.split("$")
    if len(parts) != 5 or parts[1] != "7":
        return False
    try:
        iterations, salt, digest = int(parts[2]), base64.b64decode(parts[3]), base64.b64decode(parts[4])
    except ValueError:
        return False
    return hmac.compare_digest(_pbkdf2(password, salt, iterations), digest)


def render_password_file(users: Mapping[str, str]) -> str:
    """Mosquitto password file text for ``users`` (username -> hash)."""
    return _HEADER + "".join(f"{user}:{hashed}\n" for user, hashed in sorted(users.items()))


def render_acl_file(coordinator_username: str) -> str:
    """Mosquitto ACL file text: devices confined to their own subtree, the coordinator everywhere, its
    telemetry connection reading telemetry."""
    lines = [
        _HEADER.rstrip("\n"),
        "# Every device's username is its device id; %u confines it to its own subtree.",
        *(f"pattern {access} {pattern}" for access, pattern in device_acl_patterns()),
        "",
        f"user {coordinator_username}",
        f"topic readwrite {PREFIX}/#",
        "",
        f"user {ingest_username(coordinator_username)}",
        f"topic read {channel_subscription(Channel.TELEMETRY)}",
    ]
    return "\n".join(lines) + "\n"


def _check_username(name: str) -> str:
    if not name or any(c in name for c in ":#+/\n ") or len(name) > 128:
        raise BrokerAuthError(f"broker username {name!r} cannot be written to Mosquitto's files")
    return name


def _write_if_changed(path: Path, text: str) -> bool:
    """Replace ``path`` atomically with ``text`` unless it already holds exactly that; keep its mode and group."""
    try:
        old = path.read_text()
        stat: os.stat_result | None = path.stat()
    except FileNotFoundError:
        old, stat = None, None
    if old == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        # The broker reads the file as its own user; a new file is group-readable, an existing one
        # keeps the mode and group it was given.
        os.chmod(tmp, (stat.st_mode & 0o777) if stat else 0o640)
        if stat is not None and stat.st_gid != os.getegid():
            try:
                os.chown(tmp, -1, stat.st_gid)
            except PermissionError:
                log.warning("cannot keep group %d on %s", stat.st_gid, path)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return True


class BrokerAuth:
    """Writes both files for the coordinator's own user plus the enrolled devices, and reloads the broker."""

    def __init__(self, config: BrokerAuthConfig, *, username: str, password: str) -> None:
        self.config = config
        self.username = _check_username(username)
        self._password = password
        self._lock = threading.Lock()

    def hash(self, password: str) -> str:
        return hash_password(password, tool=self.config.mosquitto_passwd)

    @property
    def reserved_usernames(self) -> tuple[str, str]:
        """The coordinator's own broker users: its control connection and its telemetry connection."""
        return self.username, ingest_username(self.username)

    def apply(self, devices: Mapping[str, str]) -> bool:
        """Write the files for ``devices`` (device id -> password hash); reload the broker if they changed.

        Returns whether anything changed. Raises BrokerAuthError when a file cannot be written or the
        reload command fails.
        """
        own = self.reserved_usernames
        if taken := [name for name in own if name in devices]:
            raise BrokerAuthError(f"device id {taken[0]!r} is one of the coordinator's broker usernames")
        with self._lock:
            hashed = self._coordinator_hash()
            users = {_check_username(d): h for d, h in devices.items()} | dict.fromkeys(own, hashed)
            try:
                changed = _write_if_changed(self.config.password_file, render_password_file(users))
                changed = _write_if_changed(self.config.acl_file, render_acl_file(self.username)) or changed
            except OSError as exc:
                raise BrokerAuthError(f"cannot write the broker's auth files: {exc}") from None
            if changed:
                self.reload()
            return changed

    def reload(self) -> None:
        command = self.config.reload_command
        if not command:
            log.warning(
                "broker auth files rewritten (%s, %s) but no reload_command is configured: reload the broker",
                self.config.password_file,
                self.config.acl_file,
            )
            return
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=self.config.reload_timeout_s)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise BrokerAuthError(f"broker reload command {command} failed: {exc}") from None
        if result.returncode != 0:
            raise BrokerAuthError(
                f"broker reload command {command} exited with {result.returncode}: {result.stderr.strip()[:500]}"
            )
        log.info("broker reloaded with new auth files (%s)", " ".join(command))

    def _coordinator_hash(self) -> str:
        """The coordinator's entry as it stands if it still matches its password; a fresh hash otherwise.

        Keeping a matching entry keeps the file unchanged across restarts, so no reload is needed.
        """
        try:
            for line in self.config.password_file.read_text().splitlines():
                user, _, hashed = line.partition(":")
                if user == self.username and check_password(self._password, hashed):
                    return hashed
        except FileNotFoundError:
            pass
        return self.hash(self._password)
