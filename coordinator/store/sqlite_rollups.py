"""The rollups in SQLite: upserts that add a batch's buckets in, the backfill of old raw telemetry, fleet sums."""

from __future__ import annotations

import logging
import sqlite3

from edgefleet.coordinator.telemetry.rollups import (
    ERRORS_COLUMN,
    HISTOGRAM_COLUMN,
    MAX_BUCKET_ERROR_KINDS,
    MAX_COLUMNS,
    MIN_COLUMNS,
    RESOLUTIONS,
    SUM_COLUMNS,
    Resolution,
    RollupBatch,
    report_from_row,
    rollup_table,
)
from edgefleet.protocol.messages import Telemetry

__all__ = ["backfill_rollups", "fleet_rollup_sql", "write_rollups"]

log = logging.getLogger(__name__)


def _upsert_sql(resolution: Resolution) -> str:
    table = rollup_table(resolution)
    columns = ("device_id", "bucket_start", *SUM_COLUMNS, *MAX_COLUMNS, *MIN_COLUMNS, ERRORS_COLUMN, HISTOGRAM_COLUMN)
    updates = [f"{c} = {c} + excluded.{c}" for c in SUM_COLUMNS]
    # SQLite's two-argument max() is NULL if either side is; fall back to whichever side has a value.
    updates += [f"{c} = coalesce(max({c}, excluded.{c}), {c}, excluded.{c})" for c in MAX_COLUMNS]
    updates += [f"{c} = coalesce(min({c}, excluded.{c}), {c}, excluded.{c})" for c in MIN_COLUMNS]
    # Error kinds are limited to the most frequent; the histogram has a fixed number of buckets.
    updates.append(_add_counts_sql(table, ERRORS_COLUMN, limit=MAX_BUCKET_ERROR_KINDS))
    updates.append(_add_counts_sql(table, HISTOGRAM_COLUMN, limit=None))
    return (
        f"insert into {table} ({', '.join(columns)}) values ({', '.join('?' * len(columns))})"
        f" on conflict (device_id, bucket_start) do update set {', '.join(updates)}"
    )


def _add_counts_sql(table: str, column: str, *, limit: int | None) -> str:
    """An upsert's update of a JSON object of counts: both sides' counts added per key (keeping the
    ``limit`` largest). Only a bucket that already has counts and gets more pays for the JSON work."""
    order = f" order by n desc, key limit {limit}" if limit is not None else ""
    return (
        f"{column} = case when excluded.{column} is null then {table}.{column}"
        f" when {table}.{column} is null then excluded.{column}"
        " else (select json_group_object(key, n) from (select key, sum(value) as n from ("
        f"select key, value from json_each({table}.{column})"
        f" union all select key, value from json_each(excluded.{column}))"
        f" group by key{order})) end"
    )


_UPSERT = {resolution: _upsert_sql(resolution) for resolution in RESOLUTIONS}


def write_rollups(conn: sqlite3.Connection, batch: RollupBatch) -> None:
    """Upsert every bucket of ``batch``; the caller holds the transaction the raw rows went in with."""
    for resolution, rows in batch.rows().items():
        if rows:
            conn.executemany(_UPSERT[resolution], rows)


def backfill_rollups(conn: sqlite3.Connection, *, chunk: int = 5000) -> int:
    """Fold into the rollups the raw telemetry no rollup covers yet; return how many reports were folded in.

    Rollups are kept at ingest since schema 4, so the rows an older coordinator stored have none. A
    device's rows not covered are those received before its earliest minute bucket (before its earliest
    hour bucket where retention has left it no minutes; all its rows where it has no bucket at all): a
    report folded in at ingest lands in the minute of ``min(sent_at, received_at)``, never after it
    arrived, so no covered row was received before that bucket. The uncovered rows are read back as
    reports ``chunk`` at a time and folded in by ``RollupBatch``, exactly as at ingest; being older,
    they make minute buckets only before the earliest existing one (an hour may be shared with it).

    Safe to re-run: the whole backfill is one transaction, so one interrupted leaves nothing behind,
    and once committed every row it folded in was received at or after the new earliest bucket, so
    running it again finds nothing to add. The price of that rule: a report stored before the upgrade
    but received after the device's earliest bucket (an outbox replay that arrived sent long before)
    stays out of the rollups, never in them twice. Rows that are not valid reports are skipped and
    counted in one warning.
    """
    columns = {row[1] for row in conn.execute("pragma table_info(telemetry)")}
    names = [n for n in Telemetry.model_fields if n in columns and n != "schema_version"] + ["received_at"]
    select = (
        f"select t.rowid, {', '.join(f't.{n}' for n in names)} from telemetry t"
        " left join temp.rollup_backfill_cutoff c on c.device_id = t.device_id"
        " where t.rowid > ? and (c.first is null or t.received_at < c.first or t.received_at is null)"
        " order by t.rowid limit ?"
    )
    folded, skipped, first_problem = 0, 0, ""
    conn.execute("begin immediate")
    try:
        # Fixed before the first write: the buckets this backfill makes must not move the cutoffs.
        conn.execute("create temp table rollup_backfill_cutoff (device_id text primary key, first text)")
        for resolution in RESOLUTIONS:  # minutes first: a device's hours count only where it has no minutes
            conn.execute(
                "insert or ignore into temp.rollup_backfill_cutoff"
                f" select device_id, min(bucket_start) from {rollup_table(resolution)} group by device_id"
            )
        after = 0
        while rows := conn.execute(select, [after, chunk]).fetchall():
            after = rows[-1][0]
            batch = RollupBatch()
            for _, *values in rows:
                try:
                    message, received_at = report_from_row(dict(zip(names, values, strict=True)))
                except (ValueError, TypeError) as exc:  # pydantic's and json's errors are ValueErrors
                    skipped += 1
                    first_problem = first_problem or f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
                    continue
                batch.add(message, received_at)
                folded += 1
            write_rollups(conn, batch)
        conn.execute("drop table temp.rollup_backfill_cutoff")
        conn.execute("commit")
    except BaseException:
        if conn.in_transaction:
            conn.execute("rollback")
        raise
    if folded:
        log.info("telemetry rollups backfilled from %d raw reports stored before rollups existed", folded)
    if skipped:
        log.warning("rollup backfill skipped %d raw telemetry rows that are not valid reports (the first: %s)",
                    skipped, first_problem)  # fmt: skip
    return folded


def fleet_rollup_sql(resolution: Resolution, *, device_class: bool) -> str:
    """Buckets summed over devices (optionally of one class): exact, since buckets hold only sums, minima and maxima."""
    aggregates = [f"sum(r.{c}) as {c}" for c in SUM_COLUMNS] + [f"max(r.{c}) as {c}" for c in MAX_COLUMNS]
    aggregates += [f"min(r.{c}) as {c}" for c in MIN_COLUMNS]
    for column in (ERRORS_COLUMN, HISTOGRAM_COLUMN):
        aggregates.append(f"json_group_array(json(r.{column})) filter (where r.{column} is not null) as {column}_list")
    join = " join devices d on d.device_id = r.device_id and d.device_class = :device_class" if device_class else ""
    return (
        f"select r.bucket_start, count(distinct r.device_id) as devices, {', '.join(aggregates)}"
        f" from {rollup_table(resolution)} r{join} where r.bucket_start >= :since"
        " group by r.bucket_start order by r.bucket_start desc limit :limit"
    )
