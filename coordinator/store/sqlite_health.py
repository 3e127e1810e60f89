"""Bounded reads of recent telemetry in the SQLite store, for the fleet's health signals."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlite_utils.db import Table

from edgefleet.coordinator.store.base import HealthReads
from edgefleet.coordinator.store.views import check_health_columns

if TYPE_CHECKING:
    from edgefleet.coordinator.store.sqlite import SQLiteStore

__all__ = ["SQLiteHealthReads"]


class SQLiteHealthReads(HealthReads):
    # Every read is bounded by an index: per device (its latest window, its newest windows) or by the
    # window's arrivals, never by the size of the raw telemetry; the store is locked meanwhile.
    def __init__(self, store: SQLiteStore) -> None:
        self.store = store

    def latest_windows(self) -> dict[str, dict[str, Any]]:
        with self.store.locked() as db:
            rows = db.query(
                "select t.* from devices d join telemetry t on t.rowid = (select rowid from telemetry"
                " where device_id = d.device_id order by received_at desc limit 1)"
            )
            return {row["device_id"]: row for row in rows}

    def window_totals(self, since: str) -> dict[str, dict[str, Any]]:
        with self.store.locked() as db:
            rows = db.query(
                "select device_id, sum(error_count) as errors, sum(inference_count) + sum(error_count) as served,"
                " min(case when error_count > 0 then received_at end) as since"
                " from telemetry where received_at >= ? group by device_id",
                [since],
            )
            return {row["device_id"]: row for row in rows}

    def recent_windows(
        self,
        device_id: str,
        columns: list[str],
        *,
        limit: int,
        not_null: str | None = None,
        bundle_digest: str | None = None,
        since: str | None = None,
        only_true: str | None = None,
    ) -> list[dict[str, Any]]:
        check_health_columns(*columns, not_null, only_true)
        where, args = ["device_id = ?"], [device_id]
        if not_null:
            where.append(f"{not_null} is not null")
        if only_true:
            where.append(f"{only_true} = 1")
        if bundle_digest is not None:
            where.append("bundle_digest = ?")
            args.append(bundle_digest)
        if since is not None:
            where.append("received_at >= ?")
            args.append(since)
        select = ", ".join(dict.fromkeys(["received_at", *columns]))
        with self.store.locked() as db:
            return list(
                Table(db, "telemetry").rows_where(
                    " and ".join(where), args, order_by="received_at desc", select=select, limit=limit
                )
            )
