"""Acknowledged and silenced alerts in the PostgreSQL store."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from edgefleet.coordinator.store.base import AlertStateRepository
from edgefleet.coordinator.store.postgres_repos import upsert

if TYPE_CHECKING:
    from edgefleet.coordinator.store.postgres import PostgresStore

__all__ = ["PostgresAlertState"]

_ACK_KEY = ("kind", "device_id", "rollout_id")
_SILENCE_KEY = ("kind", "device_id")


class PostgresAlertState(AlertStateRepository):
    def __init__(self, store: PostgresStore) -> None:
        self.store = store

    def acknowledge(self, row: dict[str, Any]) -> dict[str, Any]:
        with self.store.transaction() as conn:
            upsert(conn, "alert_acks", row, key=_ACK_KEY)
            found = conn.execute(
                "select * from alert_acks where kind = %s and device_id = %s and rollout_id = %s",
                [row[c] for c in _ACK_KEY],
            ).fetchone()
        assert found is not None
        return found

    def acknowledgments(self) -> list[dict[str, Any]]:
        with self.store.transaction() as conn:
            return conn.execute("select * from alert_acks order by kind, device_id, rollout_id").fetchall()

    def drop_acknowledgments(self, rows: list[dict[str, Any]]) -> int:
        dropped = 0
        with self.store.transaction() as conn:
            for row in rows:
                dropped += conn.execute(
                    "delete from alert_acks where kind = %s and device_id = %s and rollout_id = %s and acked_at = %s",
                    [row[c] for c in (*_ACK_KEY, "acked_at")],
                ).rowcount
        return dropped

    def silence(self, row: dict[str, Any], *, now: str) -> dict[str, Any]:
        with self.store.transaction() as conn:
            conn.execute('delete from alert_silences where "until" <= %s', [now])
            upsert(conn, "alert_silences", row, key=_SILENCE_KEY)
            found = conn.execute(
                "select * from alert_silences where kind = %s and device_id = %s", [row[c] for c in _SILENCE_KEY]
            ).fetchone()
        assert found is not None
        return found

    def silences(self, *, now: str) -> list[dict[str, Any]]:
        with self.store.transaction() as conn:
            return conn.execute(
                'select * from alert_silences where "until" > %s order by kind, device_id', [now]
            ).fetchall()

    def unsilence(self, kind: str, device_id: str) -> bool:
        with self.store.transaction() as conn:
            cursor = conn.execute("delete from alert_silences where kind = %s and device_id = %s", [kind, device_id])
        return cursor.rowcount > 0
