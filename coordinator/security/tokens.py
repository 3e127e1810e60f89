"""REST API authentication: bearer tokens with roles (read-only < operator < admin), stored hashed.

The token in the coordinator's config (``[api] token``) is the bootstrap admin and stays valid;
every other token is created through the API, shown once, and kept only as its sha256.
Without a configured token the API is open (every caller is admin), as before roles existed.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from fastapi import Request

from edgefleet.coordinator.errors import CoordinatorError, NotFound
from edgefleet.coordinator.store import FleetStore

__all__ = ["ApiTokens", "Authorizer", "Forbidden", "Principal", "Role", "Unauthorized"]

log = logging.getLogger(__name__)

TOKEN_PREFIX = "efa_"
_READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class Unauthorized(CoordinatorError):
    """No bearer token, or one that is unknown, revoked or expired (HTTP 401)."""


class Forbidden(CoordinatorError):
    """A valid token whose role does not allow the request (HTTP 403)."""


class Role(StrEnum):
    READ_ONLY = "read-only"
    OPERATOR = "operator"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return list(Role).index(self)

    def allows(self, needed: Role) -> bool:
        return self.rank >= needed.rank


@dataclass(frozen=True)
class Principal:
    """Who made a request: a token's name and role."""

    name: str
    role: Role
    token_id: str | None = None


def _now() -> datetime:
    return datetime.now(UTC)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class ApiTokens:
    """API tokens in the fleet store: only their sha256 is kept."""

    def __init__(self, db: FleetStore) -> None:
        self.db = db

    def create(self, role: Role, *, name: str, created_by: str, ttl_s: float | None = None) -> dict[str, Any]:
        """Make a token; the returned row holds the token itself, which is not stored and not shown again."""
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        now = _now()
        row = {
            "token_id": secrets.token_hex(6),
            "token_hash": _digest(token),
            "name": name,
            "role": role.value,
            "created_at": now.isoformat(),
            "created_by": created_by,
            "expires_at": (now + timedelta(seconds=ttl_s)).isoformat() if ttl_s else None,
            "revoked_at": None,
        }
        self.db.tokens.add(row)
        log.info("API token %s (%s, role %s) created by %s", row["token_id"], name, role.value, created_by)
        return _public(row) | {"token": token}

    def list(self) -> list[dict[str, Any]]:
        return [_public(r) for r in self.db.tokens.all()]

    def revoke(self, token_id: str) -> dict[str, Any]:
        row = self.db.tokens.revoke(token_id, at=_now().isoformat())
        if row is None:
            raise NotFound(f"no API token {token_id!r}")
        log.info("API token %s revoked", token_id)
        return _public(row)

    def lookup(self, token: str) -> Principal:
        """The principal of a token; Unauthorized with the reason if it is unknown, revoked or expired."""
        row = self.db.tokens.by_hash(_digest(token))
        if row is None:
            raise Unauthorized("unknown bearer token")
        if row["revoked_at"] is not None:
            raise Unauthorized(f"bearer token {row['token_id']} was revoked at {row['revoked_at']}")
        if row["expires_at"] is not None and datetime.fromisoformat(row["expires_at"]) <= _now():
            raise Unauthorized(f"bearer token {row['token_id']} expired at {row['expires_at']}")
        return Principal(name=row["name"], role=Role(row["role"]), token_id=row["token_id"])


def _public(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k != "token_hash"}


class Authorizer:
    """FastAPI dependencies that authenticate the bearer token and check its role."""

    def __init__(self, tokens: ApiTokens, bootstrap_token: str | None) -> None:
        self.tokens = tokens
        self.bootstrap_token = bootstrap_token

    @property
    def open(self) -> bool:
        return self.bootstrap_token is None

    def authenticate(self, request: Request) -> Principal:
        if self.bootstrap_token is None:
            return Principal(name="anonymous (API without a token)", role=Role.ADMIN)
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("missing bearer token: send 'Authorization: Bearer <token>'")
        token = token.strip()
        if secrets.compare_digest(token.encode(), self.bootstrap_token.encode()):
            return Principal(name="bootstrap admin (config token)", role=Role.ADMIN)
        return self.tokens.lookup(token)

    def require(self, role: Role) -> Callable[[Request], Principal]:
        """A dependency that admits tokens of ``role`` or higher."""

        def dependency(request: Request) -> Principal:
            principal = self.authenticate(request)
            if not principal.role.allows(role):
                raise Forbidden(
                    f"{request.method} {request.url.path} needs role {role.value}; "
                    f"this token ({principal.name}) is {principal.role.value}"
                )
            return principal

        return dependency

    def by_method(self, request: Request) -> Principal:
        """The default rule: reading needs read-only, anything else operator."""
        needed = Role.READ_ONLY if request.method in _READ_METHODS else Role.OPERATOR
        return self.require(needed)(request)
