"""Rollouts, their devices and the event log in the SQLite store."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlite_utils.db import Table

from edgefleet.coordinator.store.base import RolloutRepository

if TYPE_CHECKING:
    from edgefleet.coordinator.store.sqlite import SQLiteStore

__all__ = ["SQLiteRollouts"]


class SQLiteRollouts(RolloutRepository):
    def __init__(self, store: SQLiteStore) -> None:
        self.store = store

    def create(self, rollout: dict[str, Any], members: list[dict[str, Any]]) -> None:
        with self.store.locked() as db:
            Table(db, "rollouts").insert(rollout)
            Table(db, "rollout_devices").insert_all(members)

    def get(self, rollout_id: str) -> dict[str, Any] | None:
        with self.store.locked() as db:
            return next(Table(db, "rollouts").rows_where("id = ?", [rollout_id]), None)

    def ids(self, *, status: str | None = None) -> list[str]:
        where, args = ("status = ?", [status]) if status else (None, [])
        with self.store.locked() as db:
            return [r["id"] for r in Table(db, "rollouts").rows_where(where, args, order_by="created_at desc")]

    def update(self, rollout_id: str, fields: dict[str, Any]) -> None:
        with self.store.locked() as db:
            Table(db, "rollouts").update(rollout_id, fields)

    def members(self, rollout_id: str) -> list[dict[str, Any]]:
        with self.store.locked() as db:
            return list(Table(db, "rollout_devices").rows_where("rollout_id = ?", [rollout_id], order_by="wave"))

    def update_member(self, rollout_id: str, device_id: str, fields: dict[str, Any]) -> None:
        with self.store.locked() as db:
            Table(db, "rollout_devices").update((rollout_id, device_id), fields)

    def add_event(self, event: dict[str, Any]) -> None:
        with self.store.locked() as db:
            Table(db, "events").insert(event)

    def events(self, rollout_id: str | None, limit: int) -> list[dict[str, Any]]:
        where, args = ("rollout_id = ?", [rollout_id]) if rollout_id else (None, [])
        with self.store.locked() as db:
            return list(Table(db, "events").rows_where(where, args, order_by="id desc", limit=limit))

    def count_by_status(self) -> dict[str, int]:
        with self.store.locked() as db:
            return dict(db.execute("select status, count(*) from rollouts group by status").fetchall())
