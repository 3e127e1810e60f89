"""The coordinator's SQLite store (sqlite-utils): bundles, devices, desired state, telemetry and its rollups.

One connection guarded by a lock: FastAPI's worker threads and the MQTT thread share it.
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

from edgefleet.coordinator.telemetry.rollups import (
    RESOLUTIONS,
    ROLLUP_COLUMN_TYPES,
    ROLLUP_COLUMNS_6,
    ROLLUP_COLUMNS_9,
    ROLLUP_SCHEMA,
    Resolution,
    RollupBatch,
    backfill_rollups,
    bucket_start,
    fleet_rollup_sql,
    rollup_table,
    rollup_view,
)
from edgefleet.coordinator.telemetry.rows import TELEMETRY_COLUMNS, PreparedReport, prepare_arrived
from edgefleet.protocol.messages import Availability, Command, CommandResult, ReportedState, Telemetry

__all__ = ["LATEST_FIGURES", "FleetDB"]

# What the fleet overview shows of each device's recent telemetry.
LATEST_FIGURES = (
    "latency_ms_p95", "drift_score", "confidence_drift_score", "device_cpu_percent", "memory_used_percent",
    "soc_temp_c", "disk_used_percent", "outbox_pending",
)  # fmt: skip


def _now() -> str:
    return datetime.now(UTC).isoformat()


class FleetDB:
    SCHEMA_VERSION = 9  # the number of migrations in _migrate

    def __init__(self, path: Path | str) -> None:
        conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self.db = sqlite_utils.Database(conn)
        if str(path) != ":memory:":
            self.db.enable_wal()
        self._lock = threading.RLock()
        self._migrate()

    def _migrate(self) -> None:
        """Apply, in order, every schema migration newer than the file's ``user_version``."""
        migrations = [
            self._schema_1, self._schema_2, self._schema_3, self._schema_4, self._schema_5, self._schema_6,
            self._schema_7, self._schema_8, self._schema_9,
        ]  # fmt: skip
        assert len(migrations) == self.SCHEMA_VERSION
        with self.locked() as db:
            current = db.execute("pragma user_version").fetchone()[0]
            if current > len(migrations):
                raise RuntimeError(
                    f"fleet database schema {current} is newer than this coordinator ({len(migrations)})"
                )
            for version, migration in enumerate(migrations, start=1):
                if version <= current:
                    continue
                # sqlite-utils commits each step itself, so every migration is written to be
                # idempotent: one interrupted half way simply runs again at the next start.
                migration(db)
                db.execute(f"pragma user_version = {version}")

    @staticmethod
    def _schema_9(db: sqlite_utils.Database) -> None:
        """The whole device's CPU and memory use and the latency histogram: in raw telemetry and in the
        rollups (a store migrated from before schema 8 got every rollup column there)."""
        _add_columns(
            db, "telemetry", {"device_cpu_percent": float, "memory_used_percent": float, "latency_histogram": str}
        )
        for resolution in RESOLUTIONS:
            _add_columns(db, rollup_table(resolution), ROLLUP_COLUMNS_9)

    @staticmethod
    def _schema_8(db: sqlite_utils.Database) -> None:
        """Rollups for the raw telemetry stored before schema 4 kept them, in one transaction that a
        rerun cannot count twice (see ``backfill_rollups``)."""
        for resolution in RESOLUTIONS:  # the backfill writes every rollup column this code knows
            _add_columns(db, rollup_table(resolution), ROLLUP_COLUMN_TYPES)
        backfill_rollups(db.conn)

    @staticmethod
    def _schema_7(db: sqlite_utils.Database) -> None:
        """Output confidence drift in raw telemetry."""
        _add_columns(db, "telemetry", {"confidence_drift_score": float})

    @staticmethod
    def _schema_6(db: sqlite_utils.Database) -> None:
        """p99 latency, disk usage and failures by kind: in raw telemetry and in the rollups."""
        _add_columns(db, "telemetry", {
            "latency_ms_p99": float, "errors_by_kind": str, "disk_free_bytes": int, "disk_used_percent": float,
        })  # fmt: skip
        for resolution in RESOLUTIONS:
            _add_columns(db, rollup_table(resolution), ROLLUP_COLUMNS_6)

    @staticmethod
    def _schema_5(db: sqlite_utils.Database) -> None:
        """Federated campaigns and their per-round records."""
        Table(db, "campaigns").create(
            {
                "id": str, "model": str, "base_version": str, "status": str, "spec": str, "target": str,
                "devices": str, "round": int, "epsilon": float, "evaluation": str, "privacy": str,
                "result_version": str, "result_digests": str, "reason": str, "abort_requested": int,
                "created_at": str, "started_at": str, "finished_at": str,
            },
            pk="id",
            if_not_exists=True,
        )  # fmt: skip
        Table(db, "campaign_rounds").create(
            {"campaign_id": str, "round": int, "status": str, "record": str, "at": str},
            pk=("campaign_id", "round"),
            if_not_exists=True,
        )

    @staticmethod
    def _schema_4(db: sqlite_utils.Database) -> None:
        """Per-device telemetry rollups by minute and by hour; raw telemetry indexed by arrival for pruning."""
        for resolution in RESOLUTIONS:
            table = Table(db, rollup_table(resolution))
            table.create(ROLLUP_SCHEMA, pk=("device_id", "bucket_start"), if_not_exists=True)
            table.create_index(["bucket_start"], if_not_exists=True)  # retention and fleet-wide reads
        Table(db, "telemetry").create_index(["received_at"], if_not_exists=True)

    @staticmethod
    def _schema_3(db: sqlite_utils.Database) -> None:
        """Commands sent to devices and their results."""
        Table(db, "commands").create(
            {
                "command_id": str, "device_id": str, "name": str, "args": str, "sent_at": str,
                "ok": int, "detail": str, "completed_at": str,
            },
            pk="command_id", if_not_exists=True,
        )  # fmt: skip
        Table(db, "commands").create_index(["device_id", "sent_at"], if_not_exists=True)

    @staticmethod
    def _schema_2(db: sqlite_utils.Database) -> None:
        """Device groups and tags; registry stages with their history; drift in telemetry."""
        _add_columns(db, "devices", {"tags": str, "group_name": str})
        Table(db, "stages").create(
            {"model": str, "version": str, "stage": str, "updated_at": str}, pk=("model", "version"), if_not_exists=True
        )
        _add_columns(db, "telemetry", {"drift_score": float, "drift_alert": int, "drift_features": str})
        Table(db, "stage_history").create(
            {"id": int, "model": str, "version": str, "stage": str, "previous": str, "at": str},
            pk="id",
            if_not_exists=True,
        )

    @staticmethod
    def _schema_1(db: sqlite_utils.Database) -> None:
        """Bundles, devices, desired state and telemetry."""
        Table(db, "bundles").create(
            {
                "digest": str,
                "name": str,
                "version": str,
                "device_class": str,
                "model_format": str,
                "key_id": str,
                "size": int,
                "created_at": str,
                "uploaded_at": str,
                "parent": str,
                "manifest": str,
            },
            pk="digest",
            if_not_exists=True,
        )
        Table(db, "devices").create(
            {
                "device_id": str,
                "device_class": str,
                "availability": str,
                "last_seen": str,
                "status": str,
                "active_digest": str,
                "active_version": str,
                "runtime": str,
                "last_error": str,
                "reported": str,
            },
            pk="device_id",
            if_not_exists=True,
        )
        Table(db, "desired").create(
            {"device_id": str, "revision": int, "bundle_digest": str, "updated_at": str},
            pk="device_id",
            if_not_exists=True,
        )
        Table(db, "telemetry").create(
            {
                "message_id": str,
                "device_id": str,
                "received_at": str,
                "sent_at": str,
                "window_s": float,
                "bundle_digest": str,
                "runtime": str,
                "runtime_skipped": str,
                "inference_count": int,
                "error_count": int,
                "latency_ms_mean": float,
                "latency_ms_p50": float,
                "latency_ms_p95": float,
                "cpu_percent": float,
                "rss_bytes": int,
                "soc_temp_c": float,
                "outbox_pending": int,
                "outbox_dropped": str,
            },
            pk="message_id",
            if_not_exists=True,
        )
        Table(db, "telemetry").create_index(["device_id", "received_at"], if_not_exists=True)

    @contextmanager
    def locked(self) -> Iterator[sqlite_utils.Database]:
        with self._lock:
            yield self.db

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
        for row in rows:
            row["reported"] = json.loads(row["reported"]) if row.get("reported") else None
            row["tags"] = json.loads(row["tags"]) if row.get("tags") else []
            row["group"] = row.pop("group_name", None)
            row["desired"] = desired.get(row["device_id"])
        return [row for row in rows if tag is None or tag in row["tags"]]

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

    def device(self, device_id: str) -> dict[str, Any] | None:
        return next((d for d in self.devices() if d["device_id"] == device_id), None)

    # -- desired state -------------------------------------------------------------------
    def set_desired(self, device_id: str, bundle_digest: str | None) -> int:
        """Store the new desired bundle; return its revision (strictly increasing per device)."""
        with self.locked() as db:
            rows = list(Table(db, "desired").rows_where("device_id = ?", [device_id]))
            revision = (rows[0]["revision"] + 1) if rows else 1
            Table(db, "desired").upsert(
                {
                    "device_id": device_id,
                    "revision": revision,
                    "bundle_digest": bundle_digest,
                    "updated_at": _now(),
                },
                pk="device_id",
            )
        return revision

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
        for row in rows:
            row["args"] = json.loads(row["args"]) if row.get("args") else {}
            row["ok"] = None if row["ok"] is None else bool(row["ok"])
        return rows

    # -- telemetry -----------------------------------------------------------------------
    def add_telemetry(self, message: Telemetry) -> bool:
        """Insert once per message id; return False for a duplicate delivery."""
        return self.add_telemetry_batch([message]) == 1

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
                rollups.write(conn)
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


def _add_columns(db: sqlite_utils.Database, table: str, columns: dict[str, type]) -> None:
    """Add the columns ``table`` lacks (a migration run again after an interruption finds some there)."""
    existing = Table(db, table).columns_dict
    for column, kind in columns.items():
        if column not in existing:
            Table(db, table).add_column(column, kind)


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
