"""Acknowledged and silenced alerts in the SQLite store."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlite_utils.db import Table

from edgefleet.coordinator.store.base import AlertStateRepository

if TYPE_CHECKING:
    from edgefleet.coordinator.store.sqlite import SQLiteStore

__all__ = ["SQLiteAlertState"]

_ACK_KEY = ("kind", "device_id", "rollout_id")
_SILENCE_KEY = ("kind", "device_id")


class SQLiteAlertState(AlertStateRepository):
    def __init__(self, store: SQLiteStore) -> None:
        self.store = store

    def acknowledge(self, row: dict[str, Any]) -> dict[str, Any]:
        with self.store.locked() as db:
            Table(db, "alert_acks").insert(row, pk=_ACK_KEY, replace=True)
            return next(Table(db, "alert_acks").rows_where(_where(_ACK_KEY), [row[c] for c in _ACK_KEY]))

    def acknowledgments(self) -> list[dict[str, Any]]:
        with self.store.locked() as db:
            return list(Table(db, "alert_acks").rows_where(order_by=", ".join(_ACK_KEY)))

    def drop_acknowledgments(self, rows: list[dict[str, Any]]) -> int:
        if not rows:
            return 0
        with self.store.locked() as db:
            cursors = [
                db.execute(
                    f"delete from alert_acks where {_where((*_ACK_KEY, 'acked_at'))}",
                    [row[c] for c in (*_ACK_KEY, "acked_at")],
                )
                for row in rows
            ]
        return sum(cursor.rowcount for cursor in cursors)

    def silence(self, row: dict[str, Any], *, now: str) -> dict[str, Any]:
        with self.store.locked() as db:
            db.execute('delete from alert_silences where "until" <= ?', [now])
            Table(db, "alert_silences").insert(row, pk=_SILENCE_KEY, replace=True)
            return next(Table(db, "alert_silences").rows_where(_where(_SILENCE_KEY), [row[c] for c in _SILENCE_KEY]))

    def silences(self, *, now: str) -> list[dict[str, Any]]:
        with self.store.locked() as db:
            return list(Table(db, "alert_silences").rows_where('"until" > ?', [now], order_by="kind, device_id"))

    def unsilence(self, kind: str, device_id: str) -> bool:
        with self.store.locked() as db:
            cursor = db.execute("delete from alert_silences where kind = ? and device_id = ?", [kind, device_id])
        return cursor.rowcount > 0


def _where(columns: tuple[str, ...]) -> str:
    return " and ".join(f"{column} = ?" for column in columns)
