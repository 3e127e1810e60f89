"""The fleet store in SQLite (sqlite-utils), the default backend: one file, migrated on open.

One connection guarded by a lock: FastAPI's worker threads, the MQTT thread and the telemetry
writer share it. The repositories of the other areas live beside it (sqlite_*.py) on the same
connection and lock.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlite_utils
from sqlite_utils.db import Table

from edgefleet.coordinator.store.base import FleetStore
from edgefleet.coordinator.store.migrations import SCHEMA_VERSION, migrate
from edgefleet.coordinator.store.sqlite_alerts import SQLiteAlertState
from edgefleet.coordinator.store.sqlite_health import SQLiteHealthReads
from edgefleet.coordinator.store.sqlite_registry import SQLiteCampaigns, SQLiteStages
from edgefleet.coordinator.store.sqlite_rollouts import SQLiteRollouts
from edgefleet.coordinator.store.sqlite_rollups import fleet_rollup_sql, write_rollups
from edgefleet.coordinator.store.sqlite_security import SQLiteEnrollment, SQLiteTokens
from edgefleet.coordinator.store.views import LATEST_FIGURES, command_view, device_view
from edgefleet.coordinator.telemetry.rollups import (
    RESOLUTIONS,
    Resolution,
    RollupBatch,
    bucket_start,
    rollup_table,
    rollup_view,
)
from edgefleet.coordinator.telemetry.rows import TELEMETRY_COLUMNS, PreparedReport, prepare_arrived
from edgefleet.protocol.messages import Availability, Command, CommandResult, ReportedState, Telemetry

__all__ = ["SQLiteStore"]


def _now() -> str:
    return datetime.now(UTC).isoformat()


class SQLiteStore(FleetStore):
    SCHEMA_VERSION = SCHEMA_VERSION

    def __init__(self, path: Path | str) -> None:
        conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self.db = sqlite_utils.Database(conn)
        if str(path) != ":memory:":
            self.db.enable_wal()
        self._lock = threading.RLock()
        with self.locked() as db:
            migrate(db)
        self.stages = SQLiteStages(self)
        self.rollouts = SQLiteRollouts(self)
        self.campaigns = SQLiteCampaigns(self)
        self.tokens = SQLiteTokens(self)
        self.enrollment = SQLiteEnrollment(self)
        self.health = SQLiteHealthReads(self)
        self.alert_state = SQLiteAlertState(self)

    @contextmanager
    def locked(self) -> Iterator[sqlite_utils.Database]:
        """The connection, for this backend's repositories only; held alone while inside."""
        with self._lock:
            yield self.db

    def close(self) -> None:
        with self._lock:
            self.db.conn.close()

    # -- bundles -------------------------------------------------------------------------
    def add_bundle(self, row: dict[str, Any]) -> None:
        with self.locked() as db:
            Table(db, "bundles").upsert(row | {"uploaded_at": _now()}, pk="digest")

    def bundle(self, digest: str) -> dict[str, Any] | None:
        with self.locked() as db:
            rows = list(Table(db, "bundles").rows_where("digest = ?", [digest]))
        return rows[0] if rows else None

    def bundles(self) -> list[dict[str, Any]]:
        with self.locked() as db:
            return list(Table(db, "bundles").rows_where(order_by="uploaded_at desc"))

    # -- devices -------------------------------------------------------------------------
    def record_reported(self, state: ReportedState) -> None:
        row = {
            "device_id": state.device_id,
            "device_class": state.device_class,
            "last_seen": _now(),
            "status": state.status,
            "active_digest": state.active.digest if state.active else None,
            "active_version": state.active.version if state.active else None,
            "runtime": state.runtime,
            "last_error": state.last_error.reason if state.last_error else None,
            "reported": state.model_dump_json(),
            "problem": None,
            "problem_at": None,
        }
        with self.locked() as db:
            Table(db, "devices").upsert(row, pk="device_id")

    def record_availability(self, message: Availability) -> None:
        with self.locked() as db:
            Table(db, "devices").upsert(
                {"device_id": message.device_id, "availability": message.state, "last_seen": _now()},
                pk="device_id",
            )

    def devices(
        self,
        device_class: str | None = None,
        *,
        tag: str | None = None,
        group: str | None = None,
        availability: str | None = None,
    ) -> list[dict[str, Any]]:
        clauses, args = [], []
        for column, value in (("device_class", device_class), ("group_name", group), ("availability", availability)):
            if value is not None:
                clauses.append(f"{column} = ?")
                args.append(value)
        with self.locked() as db:
            rows = list(Table(db, "devices").rows_where(" and ".join(clauses) or None, args, order_by="device_id"))
            desired = {r["device_id"]: r for r in Table(db, "desired").rows}
        views = [device_view(row, desired.get(row["device_id"])) for row in rows]
        return [view for view in views if tag is None or tag in view["tags"]]

    def label_device(self, device_id: str, *, tags: list[str] | None, group: str | None) -> dict[str, Any]:
        with self.locked() as db:
            if not list(Table(db, "devices").rows_where("device_id = ?", [device_id])):
                raise KeyError(device_id)
            update: dict[str, Any] = {}
            if tags is not None:
                update["tags"] = json.dumps(sorted(set(tags)))
            if group is not None:
                update["group_name"] = group or None
            if update:
                Table(db, "devices").update(device_id, update)
        device = self.device(device_id)
        assert device is not None
        return device

    def flag_device(self, device_id: str, problem: str, *, device_class: str | None = None) -> None:
        with self.locked() as db:
            table = Table(db, "devices")
            if next(table.rows_where("device_id = ?", [device_id]), None) is None:
                table.insert({"device_id": device_id, "device_class": device_class})
            table.update(device_id, {"problem": problem, "problem_at": _now()})

    def device(self, device_id: str) -> dict[str, Any] | None:
        return next((d for d in self.devices() if d["device_id"] == device_id), None)

    # -- desired state -------------------------------------------------------------------
    def set_desired(self, device_id: str, bundle_digest: str | None, *, allow_downgrade: bool = False) -> int:
        """Store the new desired bundle; return its revision (strictly increasing per device)."""
        with self.locked() as db:
            rows = list(Table(db, "desired").rows_where("device_id = ?", [device_id]))
            revision = (rows[0]["revision"] + 1) if rows else 1
            Table(db, "desired").upsert(
                {
                    "device_id": device_id,
                    "revision": revision,
                    "bundle_digest": bundle_digest,
                    "allow_downgrade": int(allow_downgrade),
                    "updated_at": _now(),
                },
                pk="device_id",
            )
        return revision

    def desired_states(self) -> list[dict[str, Any]]:
        with self.locked() as db:
            return list(Table(db, "desired").rows_where(order_by="device_id"))

    # -- commands ------------------------------------------------------------------------
    def record_command_sent(self, command: Command) -> None:
        with self.locked() as db:
            Table(db, "commands").insert(
                {
                    "command_id": command.message_id, "device_id": command.device_id, "name": command.name,
                    "args": json.dumps(command.args), "sent_at": _now(), "ok": None, "detail": None,
                    "completed_at": None,
                },
                pk="command_id", ignore=True,
            )  # fmt: skip

    def record_command_result(self, result: CommandResult) -> bool:
        """Attach a result to the command it answers; False for a result of no command we sent."""
        with self.locked() as db:
            table = Table(db, "commands")
            rows = list(table.rows_where("command_id = ? and device_id = ?", [result.command_id, result.device_id]))
            if not rows:
                return False
            table.update(result.command_id, {"ok": int(result.ok), "detail": result.detail, "completed_at": _now()})
        return True

    def commands(self, device_id: str, limit: int = 100) -> list[dict[str, Any]]:
        with self.locked() as db:
            rows = list(
                Table(db, "commands").rows_where("device_id = ?", [device_id], order_by="sent_at desc", limit=limit)
            )
        return [command_view(row) for row in rows]

    # -- telemetry -----------------------------------------------------------------------
    def add_telemetry_batch(self, messages: list[Telemetry]) -> int:
        """Store reports that arrived now; see ``add_reports``."""
        received = datetime.now(UTC)
        received_iso, received_s = received.isoformat(), received.timestamp()
        return self.add_reports([prepare_arrived(message, received_iso, received_s) for message in messages])

    def add_reports(self, reports: list[PreparedReport]) -> int:
        """Insert many in one transaction, each once per message id, and fold the new ones into the
        rollups in that same transaction; return how many were new."""
        if not reports:
            return 0
        rows = [row for row, _, _ in reports]
        with self.locked() as db:
            conn = db.conn
            # Explicit, because sqlite-utils' own writers commit after every chunk: the raw rows and
            # the rollups they feed are stored together or not at all.
            conn.execute("begin immediate")
            try:
                new_ids = _insert_telemetry(conn, rows)
                inserted = len(new_ids)
                rollups = RollupBatch()
                for row, bucket, values in reports:
                    if row[0] in new_ids:  # a duplicate delivery (same message id) is folded in once, or never
                        new_ids.discard(row[0])
                        rollups.add_contribution(bucket, values)
                write_rollups(conn, rollups)
                _touch_last_seen(conn, rows)
                conn.execute("commit")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("rollback")
                raise
        return inserted

    def telemetry(self, device_id: str, limit: int = 100) -> list[dict[str, Any]]:
        with self.locked() as db:
            return list(
                Table(db, "telemetry").rows_where(
                    "device_id = ?", [device_id], order_by="received_at desc", limit=limit
                )
            )

    def latest_telemetry(self, lookback: int = 30) -> list[dict[str, Any]]:
        """Per device that has reported: when its latest window arrived, that window's drift alert, and
        each of ``LATEST_FIGURES`` from the latest of its last ``lookback`` windows that carries it (an idle
        window has no latency); a figure none of them carries is None. One read, index-bounded per device."""
        recent = (
            "(select * from telemetry t where t.device_id = d.device_id order by t.received_at desc limit :lookback)"
        )
        figures = ", ".join(
            f"(select {c} from {recent} where {c} is not null order by received_at desc limit 1) as {c}"
            for c in LATEST_FIGURES
        )
        sql = (
            f"select d.device_id, l.received_at, l.drift_alert, {figures} from devices d join telemetry l on l.rowid ="
            " (select rowid from telemetry where device_id = d.device_id order by received_at desc limit 1)"
            " order by d.device_id"
        )
        with self.locked() as db:
            rows = list(db.query(sql, {"lookback": lookback}))
        for row in rows:
            row["drift_alert"] = bool(row["drift_alert"])
        return rows

    def telemetry_rollups(
        self, device_id: str, resolution: Resolution, *, since: datetime | None = None, limit: int = 120
    ) -> list[dict[str, Any]]:
        """A device's buckets from ``since`` on (the bucket holding it included), newest first."""
        start = bucket_start(since, RESOLUTIONS[resolution]) if since else ""
        with self.locked() as db:
            rows = list(
                Table(db, rollup_table(resolution)).rows_where(
                    "device_id = ? and bucket_start >= ?", [device_id, start], order_by="bucket_start desc", limit=limit
                )
            )
        return [rollup_view(row) for row in rows]

    def fleet_rollups(
        self,
        resolution: Resolution,
        *,
        device_class: str | None = None,
        since: datetime | None = None,
        limit: int = 120,
    ) -> list[dict[str, Any]]:
        """Buckets summed over every device, or over the devices of one class, newest first."""
        start = bucket_start(since, RESOLUTIONS[resolution]) if since else ""
        sql = fleet_rollup_sql(resolution, device_class=device_class is not None)
        with self.locked() as db:
            rows = list(db.query(sql, {"since": start, "limit": limit, "device_class": device_class}))
        return [rollup_view(row) for row in rows]

    def prune_telemetry(
        self,
        *,
        now: datetime | None = None,
        raw_days: float = 7,
        minute_days: float = 30,
        hour_days: float = 365,
        chunk: int = 5000,
        stop: threading.Event | None = None,
    ) -> dict[str, int]:
        """Delete raw telemetry received before ``now - raw_days``, and minute and hour buckets that
        end before ``now - minute_days`` and ``now - hour_days``; return the rows deleted per table.

        Deletes ``chunk`` rows per transaction, taking the lock anew each time, so ingest is never held
        up for long; ``stop`` ends a large prune between chunks (the rest goes next time).
        """
        now = datetime.now(UTC) if now is None else now.astimezone(UTC) if now.tzinfo else now.replace(tzinfo=UTC)
        targets = [("telemetry", "received_at", (now - timedelta(days=raw_days)).isoformat())]
        rollup_days: dict[Resolution, float] = {"minute": minute_days, "hour": hour_days}
        for resolution, days in rollup_days.items():
            # A bucket is past retention once all of it is: it starts before the bucket the cutoff is in.
            cutoff = bucket_start(now - timedelta(days=days), RESOLUTIONS[resolution])
            targets.append((rollup_table(resolution), "bucket_start", cutoff))
        deleted: dict[str, int] = {}
        for table, column, cutoff in targets:
            deleted[table] = 0
            while stop is None or not stop.is_set():
                with self.locked() as db:
                    cursor = db.execute(
                        f"delete from {table} where rowid in (select rowid from {table} where {column} < ? limit ?)",
                        [cutoff, chunk],
                    )
                deleted[table] += cursor.rowcount
                if cursor.rowcount < chunk:
                    break
        return deleted

    def refused_report(self, exc: Exception) -> bool:
        if isinstance(exc, sqlite3.OperationalError):
            return "integer overflow" in str(exc)  # counts added up past 2**63; the rest: locked, full, I/O
        return isinstance(exc, sqlite3.IntegrityError | sqlite3.DataError | sqlite3.InterfaceError | OverflowError
                          | ValueError | TypeError)  # fmt: skip


_DEVICE_AT = TELEMETRY_COLUMNS.index("device_id")
_RECEIVED_AT = TELEMETRY_COLUMNS.index("received_at")


def _touch_last_seen(conn: sqlite3.Connection, rows: list[list[Any]]) -> None:
    """A device is seen whenever any message of its arrives, telemetry included (one update per device a batch)."""
    latest: dict[str, str] = {}
    for row in rows:
        device_id, received = row[_DEVICE_AT], row[_RECEIVED_AT]
        if received and received > latest.get(device_id, ""):
            latest[device_id] = received
    conn.executemany(
        "update devices set last_seen = ? where device_id = ? and (last_seen is null or last_seen < ?)",
        [(at, device_id, at) for device_id, at in latest.items()],
    )


def _insert_telemetry(conn: sqlite3.Connection, rows: list[list[Any]]) -> set[str]:
    """Insert the rows (``TELEMETRY_COLUMNS``) whose message id is new; return those ids (a repeated id
    within ``rows`` once)."""
    columns = TELEMETRY_COLUMNS
    per_statement = max(1, 999 // len(columns))  # SQLite's most conservative limit on bound parameters
    placeholders = "(" + ", ".join("?" * len(columns)) + ")"
    names = ", ".join(f'"{c}"' for c in columns)
    new: set[str] = set()
    for start in range(0, len(rows), per_statement):
        chunk = rows[start : start + per_statement]
        params = [v for row in chunk for v in row]
        cursor = conn.execute(
            f"insert or ignore into telemetry ({names}) values {', '.join([placeholders] * len(chunk))}"
            " returning message_id",
            params,
        )
        new.update(message_id for (message_id,) in cursor.fetchall())
    return new
