"""Device enrollment: one-time expiring bootstrap tokens, device identities with broker credentials, revocation.

Tokens and broker passwords are stored only as hashes. A device's broker password exists in clear
exactly once: in the answer to its enrollment.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from edgefleet.agent.device_class import load_device_class
from edgefleet.common.errors import ConfigError
from edgefleet.coordinator.config import CoordinatorConfig
from edgefleet.coordinator.errors import Conflict, CoordinatorError, NotFound, Rejected
from edgefleet.coordinator.security.broker_auth import BrokerAuth, BrokerAuthError
from edgefleet.coordinator.store import FleetStore
from edgefleet.protocol.enrollment import EnrolledBroker, EnrollResponse
from edgefleet.protocol.errors import InvalidMessage
from edgefleet.protocol.topics import validate_device_id

__all__ = ["Enrollment", "EnrollmentRefused"]

log = logging.getLogger(__name__)

TOKEN_PREFIX = "efe_"
_CLASS_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class EnrollmentRefused(CoordinatorError):
    """An enrollment token that is unknown, already used or expired (HTTP 401)."""


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Enrollment:
    def __init__(
        self,
        db: FleetStore,
        config: CoordinatorConfig,
        broker_auth: BrokerAuth | None,
        *,
        command_keys: list[str],
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self.db = db
        self.config = config
        self.broker_auth = broker_auth
        self.command_keys = command_keys
        self.clock = clock
        self._lock = threading.Lock()  # one enrollment or revocation at a time: token use and file writes

    # -- tokens --------------------------------------------------------------------------
    def issue_token(self, device_class: str, *, device_id: str | None, ttl_s: float, created_by: str) -> dict[str, Any]:
        """A one-time token for one device of ``device_class`` (and, if given, exactly ``device_id``)."""
        _check_device_class(device_class)
        if device_id is not None:
            self._check_free_name(device_id)
            if self._active_identity(device_id) is not None:
                raise Conflict(f"device {device_id!r} is already enrolled; revoke it first")
        limit = self.config.enrollment.max_token_ttl_s
        if not 0 < ttl_s <= limit:
            raise Rejected(f"token lifetime {ttl_s:.0f}s is outside 1s..{limit:.0f}s (enrollment.max_token_ttl_s)")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        now = self.clock()
        row = {
            "token_id": secrets.token_hex(6),
            "token_hash": _digest(token),
            "device_class": device_class,
            "device_id": device_id,
            "created_at": now.isoformat(),
            "created_by": created_by,
            "expires_at": (now + timedelta(seconds=ttl_s)).isoformat(),
            "used_at": None,
            "used_by": None,
        }
        self.db.enrollment.add_token(row)
        log.info("enrollment token %s issued for class %s by %s", row["token_id"], device_class, created_by)
        return _public(row) | {"token": token}

    def tokens(self) -> list[dict[str, Any]]:
        return [_public(r) for r in self.db.enrollment.tokens()]

    # -- identities ----------------------------------------------------------------------
    def identities(self) -> list[dict[str, Any]]:
        return [_identity(r) for r in self.db.enrollment.identities()]

    def enroll(self, token: str, *, device_id: str | None = None) -> EnrollResponse:
        """Spend ``token`` on a new device identity with its own broker credentials."""
        with self._lock:
            row = self._usable_token(token)
            device_id = self._choose_device_id(row, device_id)
            previous = self._identity_row(device_id)
            password = hashed = None
            if self.broker_auth is not None:
                password = secrets.token_urlsafe(24)
                hashed = self.broker_auth.hash(password)
            now = self.clock().isoformat()
            identity = {
                "device_id": device_id,
                "device_class": row["device_class"],
                "enrolled_at": now,
                "token_id": row["token_id"],
                "broker_password_hash": hashed,
                "revoked_at": None,
            }
            self.db.enrollment.spend(row["token_id"], identity, at=now)
            try:
                self._apply_broker()
            except BrokerAuthError:
                # Undo, so the token can be used again once the broker is reachable.
                self.db.enrollment.unspend(row["token_id"], device_id, previous)
                raise
        log.info("device %s (%s) enrolled with token %s", device_id, row["device_class"], row["token_id"])
        notes = []
        if self.broker_auth is None:
            notes.append(
                "broker auth is unmanaged on this coordinator (no [broker_auth]): no broker password was "
                f"issued; give {device_id!r} broker credentials yourself"
            )
        if not self.command_keys:
            notes.append("the coordinator has no command_key: this device will refuse every command")
        return EnrollResponse(
            device_id=device_id,
            device_class=row["device_class"],
            broker=EnrolledBroker(
                url=self.config.enrollment.broker_url or self.config.broker.url,
                username=device_id,
                password=password,
                ca_pem=self.config.enrollment.broker_ca_file.read_text()
                if self.config.enrollment.broker_ca_file
                else None,
                managed=self.broker_auth is not None,
            ),
            trusted_keys=[p.read_text() for p in self.config.trusted_keys],
            command_keys=self.command_keys,
            notes=notes,
        )

    def revoke(self, device_id: str, *, known_device: dict[str, Any] | None) -> dict[str, Any]:
        """Remove the device's broker credentials and mark it revoked; ``known_device`` is its fleet row, if any.

        The identity stays revoked in the store even if the broker reload fails (BrokerAuthError):
        the next enrollment, revocation or coordinator start writes the files again.
        """
        with self._lock:
            row = self._identity_row(device_id)
            if row is None and known_device is None:
                raise NotFound(f"no device {device_id!r}")
            if row is None or row["revoked_at"] is None:
                update = {
                    "device_id": device_id,
                    "device_class": (row or known_device or {}).get("device_class"),
                    "broker_password_hash": None,
                    "revoked_at": self.clock().isoformat(),
                }
                self.db.enrollment.put_identity(update)
                log.warning("device %s revoked", device_id)
            self._apply_broker()
            revoked = self._identity_row(device_id)
        assert revoked is not None
        return _identity(revoked)

    def sync_broker(self) -> None:
        """Bring the broker's files in line with the store (at start-up; a no-op when they already are)."""
        with self._lock:
            self._apply_broker()

    def is_revoked(self, device_id: str) -> bool:
        row = self._identity_row(device_id)
        return row is not None and row["revoked_at"] is not None

    # -- internals -----------------------------------------------------------------------
    def _apply_broker(self) -> None:
        if self.broker_auth is None:
            return
        self.broker_auth.apply(self.db.enrollment.broker_credentials())

    def _usable_token(self, token: str) -> dict[str, Any]:
        row = self.db.enrollment.token_by_hash(_digest(token))
        if row is None:
            raise EnrollmentRefused("unknown enrollment token")
        if row["used_at"] is not None:
            raise EnrollmentRefused(f"enrollment token {row['token_id']} was already used at {row['used_at']}")
        if datetime.fromisoformat(row["expires_at"]) <= self.clock():
            raise EnrollmentRefused(f"enrollment token {row['token_id']} expired at {row['expires_at']}")
        return row

    def _choose_device_id(self, token_row: dict[str, Any], requested: str | None) -> str:
        fixed = token_row["device_id"]
        if fixed is not None:
            if requested is not None and requested != fixed:
                raise Conflict(f"this enrollment token is for device {fixed!r}, not {requested!r}")
            if self._active_identity(fixed) is not None:
                raise Conflict(f"device {fixed!r} is already enrolled; revoke it first")
            return str(fixed)
        if requested is not None:
            self._check_free_name(requested)
            if self._identity_row(requested) is not None or self.db.device(requested) is not None:
                raise Conflict(
                    f"device id {requested!r} is taken; ask for a token naming it (enroll-token --device-id) "
                    "or enroll without one"
                )
            return requested
        while True:
            generated = f"{token_row['device_class'][:50]}-{secrets.token_hex(4)}"
            if self._identity_row(generated) is None and self.db.device(generated) is None:
                return generated

    def _check_free_name(self, device_id: str) -> None:
        _check_device_id(device_id)
        if self.broker_auth is not None and device_id in self.broker_auth.reserved_usernames:
            raise Conflict(f"device id {device_id!r} is one of the coordinator's own broker usernames")

    def _identity_row(self, device_id: str) -> dict[str, Any] | None:
        return self.db.enrollment.identity(device_id)

    def _active_identity(self, device_id: str) -> dict[str, Any] | None:
        row = self._identity_row(device_id)
        return row if row is not None and row["revoked_at"] is None else None


def _check_device_class(name: str) -> None:
    if not _CLASS_NAME.match(name):
        raise Rejected(f"invalid device class name {name!r}")
    try:
        load_device_class(name)
    except ConfigError as exc:
        raise Rejected("; ".join(exc.problems)) from None


def _check_device_id(device_id: str) -> None:
    try:
        validate_device_id(device_id)
    except InvalidMessage as exc:
        raise Rejected(exc.reason) from None


def _public(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k != "token_hash"}


def _identity(row: dict[str, Any]) -> dict[str, Any]:
    public = {k: v for k, v in row.items() if k != "broker_password_hash"}
    return public | {"status": "revoked" if row["revoked_at"] else "enrolled"}
