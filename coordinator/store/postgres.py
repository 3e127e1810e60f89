"""The fleet store in PostgreSQL (psycopg 3): for a fleet past one host, and for coordinator replicas.

Chosen by config (``[store] url = "postgresql://user@host:5432/db"``). A small connection pool serves
FastAPI's worker threads, the MQTT thread and the telemetry writer at once; each method is one
transaction (the pool commits when its block ends, rolls back when it raises), so what a method
writes lands whole, and several coordinator processes may share one database: revisions, stage moves
and report deduplication are decided by the database, not by a lock in one process. The schema is
SQLite's, migration for migration (postgres_schema.py); the repositories of the other areas live
beside it (postgres_repos.py) on the same pool.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool, PoolTimeout

from edgefleet.coordinator.errors import StoreUnavailable
from edgefleet.coordinator.store.base import FleetStore
from edgefleet.coordinator.store.postgres_alerts import PostgresAlertState
from edgefleet.coordinator.store.postgres_repos import (
    PostgresCampaigns,
    PostgresEnrollment,
    PostgresHealthReads,
    PostgresRollouts,
    PostgresStages,
    PostgresTokens,
    insert,
    plain,
    update,
    upsert,
)
from edgefleet.coordinator.store.postgres_schema import SCHEMA_VERSION, migrate
from edgefleet.coordinator.store.views import LATEST_FIGURES, command_view, device_view
from edgefleet.coordinator.telemetry.rollups import (
    ERRORS_COLUMN,
    HISTOGRAM_COLUMN,
    MAX_BUCKET_ERROR_KINDS,
    MAX_COLUMNS,
    MIN_COLUMNS,
    RESOLUTIONS,
    ROLLUP_COLUMN_TYPES,
    SUM_COLUMNS,
    Resolution,
    RollupBatch,
    bucket_start,
    rollup_table,
    rollup_view,
)
from edgefleet.coordinator.telemetry.rows import TELEMETRY_COLUMNS, PreparedReport, prepare_arrived
from edgefleet.protocol.messages import Availability, Command, CommandResult, ReportedState, Telemetry

__all__ = ["PostgresStore", "open_postgres", "redacted"]

_PARTITION_LOCK = 0x65660002  # pg_advisory_xact_lock key while a day's telemetry partition is made
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
_PARTITION = re.compile(r"telemetry_p(\d{8})")


def redacted(url: str) -> str:
    """``url`` with its password, if any, replaced: for logs and errors."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def open_postgres(url: str, *, connect_timeout_s: float = 10) -> PostgresStore:
    """The store in ``url``'s database, migrated; StoreUnavailable if its server does not answer in time."""
    try:
        # One connection first, for the server's own reason (refused, no such database, authentication)
        # rather than the pool's "initialization incomplete".
        psycopg.connect(url, connect_timeout=max(1, round(connect_timeout_s))).close()
        return PostgresStore(url, connect_timeout_s=connect_timeout_s)
    except (psycopg.OperationalError, PoolTimeout) as exc:
        detail = " ".join(str(exc).split())[:300].replace(url, redacted(url))
        raise StoreUnavailable(f"the fleet store's database at {redacted(url)} does not answer: {detail}") from exc


def _now() -> str:
    return datetime.now(UTC).isoformat()


class PostgresStore(FleetStore):
    SCHEMA_VERSION = SCHEMA_VERSION

    def __init__(self, url: str, *, max_connections: int = 4, connect_timeout_s: float = 10) -> None:
        self.url = url
        self.pool = ConnectionPool(
            url,
            min_size=1,
            max_size=max_connections,
            kwargs={"row_factory": dict_row, "connect_timeout": max(1, round(connect_timeout_s))},
            check=ConnectionPool.check_connection,  # a connection the server dropped is replaced, not used
            name="edgefleet-store",
            open=False,
        )
        self.pool.open(wait=True, timeout=connect_timeout_s)
        try:
            with self.pool.connection() as conn:
                conn.autocommit = True
                try:
                    migrate(conn)
                finally:
                    conn.autocommit = False
        except BaseException:
            self.pool.close()
            raise
        self._partitions: set[str] = set()  # days whose telemetry partition is known to exist
        self.stages = PostgresStages(self)
        self.rollouts = PostgresRollouts(self)
        self.campaigns = PostgresCampaigns(self)
        self.tokens = PostgresTokens(self)
        self.enrollment = PostgresEnrollment(self)
        self.health = PostgresHealthReads(self)
        self.alert_state = PostgresAlertState(self)

    @contextmanager
    def transaction(self) -> Iterator[psycopg.Connection[dict[str, Any]]]:
        """A connection inside one transaction, for this backend's repositories only: committed when the
        block ends, rolled back if it raises."""
        with self.pool.connection() as conn:
            yield cast("psycopg.Connection[dict[str, Any]]", conn)  # the pool's connections make dict rows

    def close(self) -> None:
        self.pool.close()

    # -- bundles -------------------------------------------------------------------------
    def add_bundle(self, row: dict[str, Any]) -> None:
        with self.transaction() as conn:
            upsert(conn, "bundles", row | {"uploaded_at": _now()}, key=("digest",))

    def bundle(self, digest: str) -> dict[str, Any] | None:
        with self.transaction() as conn:
            return conn.execute("select * from bundles where digest = %s", [digest]).fetchone()

    def bundles(self) -> list[dict[str, Any]]:
        with self.transaction() as conn:
            return conn.execute("select * from bundles order by uploaded_at desc").fetchall()

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
        with self.transaction() as conn:
            upsert(conn, "devices", row, key=("device_id",))

    def record_availability(self, message: Availability) -> None:
        with self.transaction() as conn:
            upsert(conn, "devices", {"device_id": message.device_id, "availability": message.state,
                                     "last_seen": _now()}, key=("device_id",))  # fmt: skip

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
                clauses.append(sql.SQL("{} = %s").format(sql.Identifier(column)))
                args.append(value)
        where = sql.SQL(" where ") + sql.SQL(" and ").join(clauses) if clauses else sql.SQL("")
        with self.transaction() as conn:
            rows = conn.execute(sql.SQL("select * from devices{} order by device_id").format(where), args).fetchall()
            desired = {r["device_id"]: r for r in conn.execute("select * from desired").fetchall()}
        views = [device_view(row, desired.get(row["device_id"])) for row in rows]
        return [view for view in views if tag is None or tag in view["tags"]]

    def device(self, device_id: str) -> dict[str, Any] | None:
        with self.transaction() as conn:
            row = conn.execute("select * from devices where device_id = %s", [device_id]).fetchone()
            desired = conn.execute("select * from desired where device_id = %s", [device_id]).fetchone()
        return None if row is None else device_view(row, desired)

    def label_device(self, device_id: str, *, tags: list[str] | None, group: str | None) -> dict[str, Any]:
        fields: dict[str, Any] = {}
        if tags is not None:
            fields["tags"] = json.dumps(sorted(set(tags)))
        if group is not None:
            fields["group_name"] = group or None
        with self.transaction() as conn:
            if conn.execute("select 1 from devices where device_id = %s", [device_id]).fetchone() is None:
                raise KeyError(device_id)
            if fields:
                update(conn, "devices", {"device_id": device_id}, fields)
        device = self.device(device_id)
        assert device is not None
        return device

    def flag_device(self, device_id: str, problem: str, *, device_class: str | None = None) -> None:
        with self.transaction() as conn:
            conn.execute(
                "insert into devices (device_id, device_class) values (%s, %s) on conflict (device_id) do nothing",
                [device_id, device_class],
            )
            update(conn, "devices", {"device_id": device_id}, {"problem": problem, "problem_at": _now()})

    # -- desired state -------------------------------------------------------------------
    def set_desired(self, device_id: str, bundle_digest: str | None, *, allow_downgrade: bool = False) -> int:
        """Store the new desired bundle; return its revision (strictly increasing per device, whichever
        process of several sets it)."""
        with self.transaction() as conn:
            row = conn.execute(
                "insert into desired (device_id, revision, bundle_digest, allow_downgrade, updated_at)"
                " values (%s, 1, %s, %s, %s) on conflict (device_id) do update set revision = desired.revision + 1,"
                " bundle_digest = excluded.bundle_digest, allow_downgrade = excluded.allow_downgrade,"
                " updated_at = excluded.updated_at returning revision",
                [device_id, bundle_digest, int(allow_downgrade), _now()],
            ).fetchone()
        assert row is not None
        return int(row["revision"])

    def desired_states(self) -> list[dict[str, Any]]:
        with self.transaction() as conn:
            return conn.execute("select * from desired order by device_id").fetchall()

    # -- commands ------------------------------------------------------------------------
    def record_command_sent(self, command: Command) -> None:
        row = {
            "command_id": command.message_id, "device_id": command.device_id, "name": command.name,
            "args": json.dumps(command.args), "sent_at": _now(), "ok": None, "detail": None, "completed_at": None,
        }  # fmt: skip
        with self.transaction() as conn:
            insert(conn, "commands", row, on_conflict_do_nothing=True)

    def record_command_result(self, result: CommandResult) -> bool:
        with self.transaction() as conn:
            cursor = conn.execute(
                "update commands set ok = %s, detail = %s, completed_at = %s where command_id = %s and device_id = %s",
                [int(result.ok), result.detail, _now(), result.command_id, result.device_id],
            )
            return cursor.rowcount > 0

    def commands(self, device_id: str, limit: int = 100) -> list[dict[str, Any]]:
        with self.transaction() as conn:
            rows = conn.execute(
                "select * from commands where device_id = %s order by sent_at desc limit %s", [device_id, limit]
            ).fetchall()
        return [command_view(row) for row in rows]

    # -- telemetry -----------------------------------------------------------------------
    def add_telemetry_batch(self, messages: list[Telemetry]) -> int:
        received = datetime.now(UTC)
        received_iso, received_s = received.isoformat(), received.timestamp()
        return self.add_reports([prepare_arrived(message, received_iso, received_s) for message in messages])

    def add_reports(self, reports: list[PreparedReport]) -> int:
        """Insert many in one transaction, each once per message id (across every process writing to this
        database), and fold the new ones into the rollups in that same transaction; return how many were new."""
        if not reports:
            return 0
        with self.transaction() as conn:
            rows = [[plain(v) for v in row] for row, _, _ in reports]
            new_ids = set(
                r["message_id"]
                for r in conn.execute(
                    "insert into telemetry_ids (message_id, received_at) select * from unnest(%s::text[], %s::text[])"
                    " on conflict do nothing returning message_id",
                    [[row[0] for row in rows], [row[_RECEIVED_AT] for row in rows]],
                )
            )
            inserted = len(new_ids)
            fresh, rollups = [], RollupBatch()
            for row, (_, bucket, values) in zip(rows, reports, strict=True):
                if row[0] in new_ids:  # a duplicate delivery (same message id) is stored and folded in once, or never
                    new_ids.discard(row[0])
                    fresh.append(row)
                    rollups.add_contribution(bucket, values)
            self._make_partitions(conn, {row[_RECEIVED_AT][:10] for row in fresh if _is_day(row[_RECEIVED_AT])})
            with conn.cursor().copy(_COPY_TELEMETRY) as copy:
                for row in fresh:
                    copy.write_row(row)
            _write_rollups(conn, rollups)
            _touch_last_seen(conn, fresh)
        return inserted

    def _make_partitions(self, conn: psycopg.Connection[Any], days: set[str]) -> None:
        missing = days - self._partitions
        if not missing:
            return
        conn.execute("select pg_advisory_xact_lock(%s)", [_PARTITION_LOCK])  # another process may be making it
        for day in sorted(missing):
            start = date.fromisoformat(day)
            conn.execute(
                sql.SQL("create table if not exists {} partition of telemetry for values from ({}) to ({})").format(
                    sql.Identifier(f"telemetry_p{start:%Y%m%d}"),
                    sql.Literal(start.isoformat()),
                    sql.Literal((start + timedelta(days=1)).isoformat()),
                )
            )
        self._partitions |= missing  # a rollback below leaves them made too: DDL commits with the batch,
        # and if the batch fails, the next one only finds them there (create ... if not exists)

    def telemetry(self, device_id: str, limit: int = 100) -> list[dict[str, Any]]:
        with self.transaction() as conn:
            return conn.execute(
                "select * from telemetry where device_id = %s order by received_at desc limit %s", [device_id, limit]
            ).fetchall()

    def latest_telemetry(self, lookback: int = 30) -> list[dict[str, Any]]:
        """Per device that has reported: when its latest window arrived, that window's drift alert, and
        each of ``LATEST_FIGURES`` from the latest of its last ``lookback`` windows that carries it (an idle
        window has no latency); a figure none of them carries is None. Index-bounded per device."""
        figures = ", ".join(
            f"(array_agg({c} order by received_at desc) filter (where {c} is not null))[1] as {c}"
            for c in LATEST_FIGURES
        )
        query = (
            "select d.device_id, l.received_at, l.drift_alert, f.* from devices d"
            " join lateral (select received_at, drift_alert from telemetry t where t.device_id = d.device_id"
            " order by received_at desc limit 1) l on true"
            f" cross join lateral (select {figures} from (select * from telemetry t where t.device_id = d.device_id"
            " order by received_at desc limit %(lookback)s) r) f order by d.device_id"
        )
        with self.transaction() as conn:
            rows = conn.execute(query, {"lookback": lookback}).fetchall()
        for row in rows:
            row["drift_alert"] = bool(row["drift_alert"])
        return rows

    def telemetry_rollups(
        self, device_id: str, resolution: Resolution, *, since: datetime | None = None, limit: int = 120
    ) -> list[dict[str, Any]]:
        start = bucket_start(since, RESOLUTIONS[resolution]) if since else ""
        query = sql.SQL(
            "select * from {} where device_id = %s and bucket_start >= %s order by bucket_start desc limit %s"
        ).format(sql.Identifier(rollup_table(resolution)))
        with self.transaction() as conn:
            rows = conn.execute(query, [device_id, start, limit]).fetchall()
        return [rollup_view(row) for row in rows]

    def fleet_rollups(
        self,
        resolution: Resolution,
        *,
        device_class: str | None = None,
        since: datetime | None = None,
        limit: int = 120,
    ) -> list[dict[str, Any]]:
        start = bucket_start(since, RESOLUTIONS[resolution]) if since else ""
        with self.transaction() as conn:
            rows = conn.execute(
                _fleet_rollup_sql(resolution, device_class=device_class is not None),
                {"since": start, "limit": limit, "device_class": device_class},
            ).fetchall()
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
        """Delete raw telemetry received before ``now - raw_days`` (whole days by dropping their partition,
        the rest ``chunk`` rows at a time), and minute and hour buckets that end before ``now - minute_days``
        and ``now - hour_days``; return the rows deleted per table. ``stop`` ends it between chunks."""
        now = datetime.now(UTC) if now is None else now.astimezone(UTC) if now.tzinfo else now.replace(tzinfo=UTC)
        raw_cutoff = (now - timedelta(days=raw_days)).isoformat()
        deleted = {"telemetry": self._drop_days(raw_cutoff)}
        targets: list[tuple[str, str, str, tuple[str, ...]]] = [
            ("telemetry", "received_at", raw_cutoff, ("message_id",))
        ]
        rollup_days: dict[Resolution, float] = {"minute": minute_days, "hour": hour_days}
        for resolution, days in rollup_days.items():
            cutoff = bucket_start(now - timedelta(days=days), RESOLUTIONS[resolution])
            targets.append((rollup_table(resolution), "bucket_start", cutoff, ("device_id", "bucket_start")))
        targets.append(("telemetry_ids", "received_at", raw_cutoff, ("message_id",)))
        for table, column, cutoff, key in targets:
            deleted.setdefault(table, 0)
            keys = sql.SQL(", ").join(map(sql.Identifier, key))
            statement = sql.SQL("delete from {t} where ({k}) in (select {k} from {t} where {c} < %s limit %s)").format(
                t=sql.Identifier(table), k=keys, c=sql.Identifier(column)
            )
            while stop is None or not stop.is_set():
                with self.transaction() as conn:
                    count = conn.execute(statement, [cutoff, chunk]).rowcount
                deleted[table] += count
                if count < chunk:
                    break
        deleted.pop("telemetry_ids")  # bookkeeping, not telemetry
        return deleted

    def _drop_days(self, cutoff: str) -> int:
        """Drop the partitions of days that ended by ``cutoff``; return the rows they held."""
        dropped = 0
        with self.transaction() as conn:
            names = [
                r["relname"]
                for r in conn.execute(
                    "select c.relname from pg_inherits i join pg_class c on c.oid = i.inhrelid"
                    " where i.inhparent = 'telemetry'::regclass"
                )
            ]
        for name in sorted(names):
            match = _PARTITION.fullmatch(name)
            if not match:
                continue
            end = datetime.strptime(match[1], "%Y%m%d").date() + timedelta(days=1)
            if end.isoformat() > cutoff:
                continue
            with self.transaction() as conn:
                row = conn.execute(sql.SQL("select count(*) as n from {}").format(sql.Identifier(name))).fetchone()
                conn.execute(sql.SQL("drop table {}").format(sql.Identifier(name)))
            dropped += int(row["n"]) if row else 0
            self._partitions.discard(f"{end - timedelta(days=1):%Y-%m-%d}")
        return dropped

    def refused_report(self, exc: Exception) -> bool:
        # A value the database refuses (out of range, NUL in text, too large to index); the rest (the
        # server gone, a lock timeout, disk full) is the store's, and the batch is tried again.
        if isinstance(exc, psycopg.errors.ProgramLimitExceeded):
            return True
        return isinstance(exc, psycopg.DataError | psycopg.IntegrityError | OverflowError | ValueError | TypeError)


_DEVICE_AT = TELEMETRY_COLUMNS.index("device_id")
_RECEIVED_AT = TELEMETRY_COLUMNS.index("received_at")
_COPY_TELEMETRY = sql.SQL("copy telemetry ({}) from stdin").format(
    sql.SQL(", ").join(map(sql.Identifier, TELEMETRY_COLUMNS))
)


def _is_day(received_at: object) -> bool:
    return isinstance(received_at, str) and _DAY.match(received_at) is not None


def _touch_last_seen(conn: psycopg.Connection[Any], rows: list[list[Any]]) -> None:
    """A device is seen whenever any message of its arrives, telemetry included (one update per device a batch)."""
    latest: dict[str, str] = {}
    for row in rows:
        device_id, received = row[_DEVICE_AT], row[_RECEIVED_AT]
        if received and received > latest.get(device_id, ""):
            latest[device_id] = received
    if latest:
        conn.execute(
            "update devices d set last_seen = u.at from unnest(%s::text[], %s::text[]) as u(device_id, at)"
            " where d.device_id = u.device_id and (d.last_seen is null or d.last_seen < u.at)",
            [list(latest), list(latest.values())],
        )


def _upsert_rollup_sql(resolution: Resolution) -> sql.SQL:
    table = rollup_table(resolution)
    columns = ("device_id", "bucket_start", *SUM_COLUMNS, *MAX_COLUMNS, *MIN_COLUMNS, ERRORS_COLUMN, HISTOGRAM_COLUMN)
    updates = [f"{c} = r.{c} + excluded.{c}" for c in SUM_COLUMNS]
    updates += [f"{c} = greatest(r.{c}, excluded.{c})" for c in MAX_COLUMNS]  # NULLs are ignored
    updates += [f"{c} = least(r.{c}, excluded.{c})" for c in MIN_COLUMNS]
    updates.append(_add_counts_sql(ERRORS_COLUMN, limit=MAX_BUCKET_ERROR_KINDS))
    updates.append(_add_counts_sql(HISTOGRAM_COLUMN, limit=None))
    return sql.SQL(
        f"insert into {table} as r ({', '.join(columns)}) values ({', '.join(['%s'] * len(columns))})"
        f" on conflict (device_id, bucket_start) do update set {', '.join(updates)}"
    )


def _add_counts_sql(column: str, *, limit: int | None) -> str:
    """An upsert's update of a JSON object of counts: both sides' counts added per key (the ``limit`` largest kept)."""
    order = f" order by n desc, key limit {limit}" if limit is not None else ""
    return (
        f"{column} = case when excluded.{column} is null then r.{column} when r.{column} is null then excluded.{column}"
        f" else (select json_object_agg(key, n)::text from (select key, sum(value::bigint) as n from ("
        f"select key, value from json_each_text(r.{column}::json)"
        f" union all select key, value from json_each_text(excluded.{column}::json)) u group by key{order}) s) end"
    )


_UPSERT_ROLLUP = {resolution: _upsert_rollup_sql(resolution) for resolution in RESOLUTIONS}


def _write_rollups(conn: psycopg.Connection[Any], batch: RollupBatch) -> None:
    for resolution, rows in batch.rows().items():
        if rows:
            conn.cursor().executemany(_UPSERT_ROLLUP[resolution], [[plain(v) for v in row] for row in rows])


def _fleet_rollup_sql(resolution: Resolution, *, device_class: bool) -> str:
    """Buckets summed over devices (optionally of one class); integer sums stay integers, as in SQLite."""
    aggregates = [
        f"sum(r.{c})::bigint as {c}" if ROLLUP_COLUMN_TYPES[c] is int else f"sum(r.{c}) as {c}" for c in SUM_COLUMNS
    ]
    aggregates += [f"max(r.{c}) as {c}" for c in MAX_COLUMNS] + [f"min(r.{c}) as {c}" for c in MIN_COLUMNS]
    for column in (ERRORS_COLUMN, HISTOGRAM_COLUMN):
        aggregates.append(f"(json_agg(r.{column}::json) filter (where r.{column} is not null))::text as {column}_list")
    join = " join devices d on d.device_id = r.device_id and d.device_class = %(device_class)s" if device_class else ""
    return (
        f"select r.bucket_start, count(distinct r.device_id) as devices, {', '.join(aggregates)}"
        f" from {rollup_table(resolution)} r{join} where r.bucket_start >= %(since)s"
        " group by r.bucket_start order by r.bucket_start desc limit %(limit)s"
    )
