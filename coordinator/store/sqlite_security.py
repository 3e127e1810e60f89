"""API tokens, enrollment tokens and device identities in the SQLite store."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlite_utils.db import Table

from edgefleet.coordinator.store.base import EnrollmentRepository, TokenRepository

if TYPE_CHECKING:
    from edgefleet.coordinator.store.sqlite import SQLiteStore

__all__ = ["SQLiteEnrollment", "SQLiteTokens"]


class SQLiteTokens(TokenRepository):
    def __init__(self, store: SQLiteStore) -> None:
        self.store = store

    def add(self, row: dict[str, Any]) -> None:
        with self.store.locked() as db:
            Table(db, "api_tokens").insert(row)

    def all(self) -> list[dict[str, Any]]:
        with self.store.locked() as db:
            return list(Table(db, "api_tokens").rows_where(order_by="created_at"))

    def by_hash(self, token_hash: str) -> dict[str, Any] | None:
        with self.store.locked() as db:
            return next(Table(db, "api_tokens").rows_where("token_hash = ?", [token_hash]), None)

    def revoke(self, token_id: str, *, at: str) -> dict[str, Any] | None:
        with self.store.locked() as db:
            table = Table(db, "api_tokens")
            row = next(table.rows_where("token_id = ?", [token_id]), None)
            if row is None:
                return None
            if row["revoked_at"] is None:
                table.update(token_id, {"revoked_at": at})
            return next(table.rows_where("token_id = ?", [token_id]))


class SQLiteEnrollment(EnrollmentRepository):
    def __init__(self, store: SQLiteStore) -> None:
        self.store = store

    def add_token(self, row: dict[str, Any]) -> None:
        with self.store.locked() as db:
            Table(db, "enroll_tokens").insert(row)

    def tokens(self) -> list[dict[str, Any]]:
        with self.store.locked() as db:
            return list(Table(db, "enroll_tokens").rows_where(order_by="created_at"))

    def token_by_hash(self, token_hash: str) -> dict[str, Any] | None:
        with self.store.locked() as db:
            return next(Table(db, "enroll_tokens").rows_where("token_hash = ?", [token_hash]), None)

    def spend(self, token_id: str, identity: dict[str, Any], *, at: str) -> None:
        with self.store.locked() as db:
            Table(db, "enroll_tokens").update(token_id, {"used_at": at, "used_by": identity["device_id"]})
            Table(db, "identities").upsert(identity, pk="device_id")

    def unspend(self, token_id: str, device_id: str, previous: dict[str, Any] | None) -> None:
        with self.store.locked() as db:
            Table(db, "enroll_tokens").update(token_id, {"used_at": None, "used_by": None})
            if previous is None:
                Table(db, "identities").delete(device_id)
            else:
                Table(db, "identities").upsert(previous, pk="device_id")

    def identity(self, device_id: str) -> dict[str, Any] | None:
        with self.store.locked() as db:
            return next(Table(db, "identities").rows_where("device_id = ?", [device_id]), None)

    def identities(self) -> list[dict[str, Any]]:
        with self.store.locked() as db:
            return list(Table(db, "identities").rows_where(order_by="device_id"))

    def put_identity(self, row: dict[str, Any]) -> None:
        with self.store.locked() as db:
            Table(db, "identities").upsert(row, pk="device_id")

    def broker_credentials(self) -> dict[str, str]:
        with self.store.locked() as db:
            rows = Table(db, "identities").rows_where("revoked_at is null and broker_password_hash is not null")
            return {r["device_id"]: r["broker_password_hash"] for r in rows}
