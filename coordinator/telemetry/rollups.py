"""Telemetry rollups: per-device minute and hour buckets kept current at ingest, read back, and pruned.

A bucket stores sums, counts, maxima and minima only (failures per kind as counts added up), never a
mean: means are derived on read, so they stay exact however many reports (and ingest batches) land in
one bucket, and buckets of several devices add up exactly into fleet or device-class figures.
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
import threading
from collections import Counter
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, get_origin

from edgefleet.protocol import histogram
from edgefleet.protocol.messages import Telemetry

if TYPE_CHECKING:
    from edgefleet.coordinator.config import TelemetryRetentionConfig
    from edgefleet.coordinator.store.sqlite import FleetDB

__all__ = [
    "CONTRIBUTION_LAYOUT",
    "MAX_BUCKET_ERROR_KINDS",
    "RESOLUTIONS",
    "ROLLUP_COLUMNS_6",
    "ROLLUP_COLUMNS_9",
    "ROLLUP_COLUMN_TYPES",
    "ROLLUP_SCHEMA",
    "TELEMETRY_JSON_FIELDS",
    "Resolution",
    "RollupBatch",
    "TelemetryPruner",
    "backfill_rollups",
    "bucket_start",
    "contribution",
    "fleet_rollup_sql",
    "rollup_table",
    "rollup_view",
]

log = logging.getLogger(__name__)

Resolution = Literal["minute", "hour"]
RESOLUTIONS: dict[Resolution, int] = {"minute": 60, "hour": 3600}  # bucket width in seconds

# Added up when reports meet in a bucket.
_SUMS = (
    "reports",
    "inference_count",
    "error_count",
    "window_s",
    "latency_ms_weighted_sum",  # latency_ms_mean * inference_count: the mean is per inference, not per report
    "latency_ms_weight",  # inference_count of the reports that carry a latency_ms_mean
    "cpu_percent_sum",
    "cpu_percent_reports",
    "drift_alerts",
)
# The larger one is kept; NULL where no report had the value.
_MAXES = (
    "latency_ms_mean_max",
    "latency_ms_p95_max",
    "rss_bytes_max",
    "soc_temp_c_max",
    "drift_score_max",
    "outbox_pending_max",
    "latency_ms_p99_max",
    "disk_used_percent_max",
    "device_cpu_percent_max",
    "memory_used_percent_max",
)
# The smaller one is kept; NULL where no report had the value.
_MINS = ("disk_free_bytes_min",)
# Failed requests per kind, as a JSON object whose counts are added up; NULL where no report had errors.
_ERRORS = "errors_by_kind"
# Requests per latency bucket (protocol/histogram.py), likewise: the bucket's percentiles are made of it.
_HISTOGRAM = "latency_histogram"
MAX_BUCKET_ERROR_KINDS = 32  # a bucket keeps the most frequent kinds, so a device cannot grow it without end
_N_SUMS, _N_MAXES = len(_SUMS), len(_MAXES)
# What a report's contribution lists, in order (see ``contribution``).
CONTRIBUTION_LAYOUT = (*_SUMS, *_MAXES, *_MINS, _ERRORS, _HISTOGRAM)
# Every column a rollup table has today, but its key.
ROLLUP_COLUMN_TYPES: dict[str, type] = {
    "reports": int, "inference_count": int, "error_count": int, "window_s": float,
    "latency_ms_weighted_sum": float, "latency_ms_weight": int, "cpu_percent_sum": float,
    "cpu_percent_reports": int, "drift_alerts": int, "latency_ms_mean_max": float, "latency_ms_p95_max": float,
    "rss_bytes_max": int, "soc_temp_c_max": float, "drift_score_max": float, "outbox_pending_max": int,
    "latency_ms_p99_max": float, "disk_used_percent_max": float, "device_cpu_percent_max": float,
    "memory_used_percent_max": float, "disk_free_bytes_min": int, _ERRORS: str, _HISTOGRAM: str,
}  # fmt: skip
# The columns each migration gave the rollup tables: schema 4 created them, schema 6 added p99, disk and
# error kinds, schema 9 the device's CPU and memory and the latency histogram.
ROLLUP_COLUMNS_6: dict[str, type] = {
    c: ROLLUP_COLUMN_TYPES[c] for c in ("latency_ms_p99_max", "disk_used_percent_max", "disk_free_bytes_min", _ERRORS)
}
ROLLUP_COLUMNS_9: dict[str, type] = {
    c: ROLLUP_COLUMN_TYPES[c] for c in ("device_cpu_percent_max", "memory_used_percent_max", _HISTOGRAM)
}
ROLLUP_SCHEMA: dict[str, type] = {"device_id": str, "bucket_start": str} | {
    c: ROLLUP_COLUMN_TYPES[c] for c in _SUMS + _MAXES if c not in ROLLUP_COLUMNS_6 and c not in ROLLUP_COLUMNS_9
}


def rollup_table(resolution: Resolution) -> str:
    return f"telemetry_{resolution}"


_FIRST_S = datetime.min.replace(tzinfo=UTC).timestamp()
_LAST_S = datetime(9999, 12, 31, 23, tzinfo=UTC).timestamp()  # the last start of a minute and of an hour


def bucket_start(at: datetime, width_s: int) -> str:
    """The start of the bucket holding ``at``, as ISO 8601 UTC (the format of every time in the store).

    Times whose UTC falls outside the years 1-9999 (a query's ``since``, a device's bogus clock) are
    clamped to those ends rather than failing.
    """
    at = at if at.tzinfo else at.replace(tzinfo=UTC)
    return _iso(math.floor(at.timestamp() / width_s) * width_s)


def _iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(min(max(epoch_s, _FIRST_S), _LAST_S), UTC).isoformat()


def _upsert_sql(resolution: Resolution) -> str:
    table = rollup_table(resolution)
    columns = ("device_id", "bucket_start", *_SUMS, *_MAXES, *_MINS, _ERRORS, _HISTOGRAM)
    updates = [f"{c} = {c} + excluded.{c}" for c in _SUMS]
    # SQLite's two-argument max() is NULL if either side is; fall back to whichever side has a value.
    updates += [f"{c} = coalesce(max({c}, excluded.{c}), {c}, excluded.{c})" for c in _MAXES]
    updates += [f"{c} = coalesce(min({c}, excluded.{c}), {c}, excluded.{c})" for c in _MINS]
    # Error kinds are limited to the most frequent; the histogram has a fixed number of buckets.
    updates.append(_add_counts_sql(table, _ERRORS, limit=MAX_BUCKET_ERROR_KINDS))
    updates.append(_add_counts_sql(table, _HISTOGRAM, limit=None))
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


def _max(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else max(a, b)


def _min(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)


def _error_kinds_json(counts: Mapping[str, int]) -> str | None:
    """The stored form of a bucket's error kinds: the most frequent first, NULL for none."""
    kept = sorted(((k, n) for k, n in counts.items() if n > 0), key=lambda kn: (-kn[1], kn[0]))
    return json.dumps(dict(kept[:MAX_BUCKET_ERROR_KINDS])) if kept else None


def _histogram_json(counts: Mapping[int, int]) -> str | None:
    """The stored form of a bucket's latency histogram: requests per bucket index, NULL for none."""
    return json.dumps({str(b): n for b, n in sorted(counts.items()) if n > 0}) if counts else None


def _finite(value: float | None) -> float | None:
    # json.loads takes NaN and Infinity: one such report must not poison a bucket (NaN is NULL in
    # SQLite, and NULL + x stays NULL) nor make it unserialisable as JSON.
    return value if value is None or math.isfinite(value) else None


def _add_counts(into: Mapping[Any, int], more: Mapping[Any, int]) -> Mapping[Any, int]:
    """Counts per key of both, as a new dict (neither is changed: a report's own dict may be shared)."""
    if not into:
        return more
    total = dict(into)
    for key, n in more.items():
        total[key] = total.get(key, 0) + n
    return total


# Counts are plain dicts, never changed in place: cheap to hand between processes (a Counter costs ~10 us
# to unpickle), and a report's own dict can be used as it is.
_NO_COUNTS: Mapping[Any, int] = {}


def contribution(message: Telemetry, received_s: float) -> tuple[tuple[str, int], list[Any]]:
    """A report that arrived at ``received_s`` (epoch seconds): its minute bucket, (device id, start in
    epoch seconds), and what it adds to it."""
    # Bucketed by when the device closed the window, so an outbox replayed after an outage lands
    # where it happened; a device clock running ahead cannot make buckets in the future.
    sent = message.sent_at if message.sent_at.tzinfo else message.sent_at.replace(tzinfo=UTC)
    return (message.device_id, math.floor(min(sent.timestamp(), received_s) / 60) * 60), _values(message)


def _values(message: Telemetry) -> list[Any]:
    """One report's contribution, in the order of ``_SUMS``, ``_MAXES``, ``_MINS``, then its error kinds
    and its latency histogram (counts per key); a non-finite value counts as absent."""
    m = message
    latency, cpu = _finite(m.latency_ms_mean), _finite(m.cpu_percent)
    return [
        1, m.inference_count, m.error_count, _finite(m.window_s) or 0.0,
        0.0 if latency is None else latency * m.inference_count, 0 if latency is None else m.inference_count,
        cpu or 0.0, 0 if cpu is None else 1, int(m.drift_alert),
        latency, _finite(m.latency_ms_p95), m.rss_bytes, _finite(m.soc_temp_c), _finite(m.drift_score),
        m.outbox_pending, _finite(m.latency_ms_p99), _finite(m.disk_used_percent),
        _finite(m.device_cpu_percent), _finite(m.memory_used_percent), m.disk_free_bytes,
        m.errors_by_kind or _NO_COUNTS,
        m.latency_histogram or _NO_COUNTS,
    ]  # fmt: skip


def _merge(into: list[Any], values: list[Any]) -> None:
    for i in range(_N_SUMS):
        into[i] += values[i]
    for i in range(_N_SUMS, _N_SUMS + _N_MAXES):
        into[i] = _max(into[i], values[i])
    for i in range(_N_SUMS + _N_MAXES, len(values) - 2):
        into[i] = _min(into[i], values[i])
    for i in (-2, -1):  # error kinds, latency histogram
        if values[i]:
            into[i] = _add_counts(into[i], values[i])  # a new dict: the one in ``into`` may be shared


class RollupBatch:
    """The rollup changes of one ingest batch, merged per device and bucket before writing.

    Reports are merged into minutes, and the hours made from those minutes, so each report is
    handled once whatever the number of resolutions.
    """

    def __init__(self) -> None:
        self._minutes: dict[tuple[str, int], list[Any]] = {}  # (device_id, minute start, epoch s)

    def add(self, message: Telemetry, received_at: datetime) -> None:
        self.add_contribution(*contribution(message, received_at.timestamp()))

    def add_contribution(self, bucket: tuple[str, int], values: list[Any]) -> None:
        """Fold in what ``contribution`` made of a report (``values`` is taken over, not copied)."""
        current = self._minutes.get(bucket)
        if current is None:
            self._minutes[bucket] = values
        else:
            _merge(current, values)

    def write(self, conn: sqlite3.Connection) -> None:
        """Upsert every bucket; the caller holds the transaction the raw rows went in with."""
        hours: dict[tuple[str, int], list[Any]] = {}
        for (device_id, minute), values in self._minutes.items():
            key = (device_id, minute // 3600 * 3600)
            current = hours.get(key)
            if current is None:
                hours[key] = list(values)  # the counts stay shared until a merge replaces them
            else:
                _merge(current, values)
        for sql, buckets in ((_UPSERT["minute"], self._minutes), (_UPSERT["hour"], hours)):
            rows = [
                (device_id, _iso(start), *values[:-2], _error_kinds_json(values[-2]), _histogram_json(values[-1]))
                for (device_id, start), values in buckets.items()
            ]
            if rows:
                conn.executemany(sql, rows)


# Stored as JSON text, like every list and dict of a report (coordinator/report_rows.py writes them so).
TELEMETRY_JSON_FIELDS = frozenset(
    n for n, f in Telemetry.model_fields.items() if get_origin(f.annotation) in (list, dict)
)
# NULL in a column of the report means the column came after the row (the model's default applies), but a
# row without these was never a report: leaving them to their default factories would invent them.
_NOT_DEFAULTED = frozenset({"message_id", "sent_at"})


def _report_from_row(row: dict[str, Any]) -> tuple[Telemetry, datetime]:
    """A raw telemetry row as the report it was stored from, and its arrival; ValueError or TypeError if not one."""
    received_at = datetime.fromisoformat(row.pop("received_at"))
    fields = {
        name: json.loads(value) if name in TELEMETRY_JSON_FIELDS and isinstance(value, str) else value
        for name, value in row.items()
        if value is not None or name in _NOT_DEFAULTED
    }
    return Telemetry.model_validate(fields), received_at if received_at.tzinfo else received_at.replace(tzinfo=UTC)


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
                    message, received_at = _report_from_row(dict(zip(names, values, strict=True)))
                except (ValueError, TypeError) as exc:  # pydantic's and json's errors are ValueErrors
                    skipped += 1
                    first_problem = first_problem or f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
                    continue
                batch.add(message, received_at)
                folded += 1
            batch.write(conn)
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


def rollup_view(row: dict[str, Any]) -> dict[str, Any]:
    """A stored bucket (or a sum of buckets) as the API shows it: counts, rates, means and maxima."""
    served = row["inference_count"] + row["error_count"]
    view = {
        "bucket_start": row["bucket_start"],
        "reports": row["reports"],
        "inference_count": row["inference_count"],
        "error_count": row["error_count"],
        "error_rate": row["error_count"] / served if served else None,  # as the alerts compute it
        "window_s": row["window_s"],
        "latency_ms_mean": row["latency_ms_weighted_sum"] / row["latency_ms_weight"]
        if row["latency_ms_weight"]
        else None,
        "cpu_percent_mean": row["cpu_percent_sum"] / row["cpu_percent_reports"] if row["cpu_percent_reports"] else None,
        "drift_alerts": row["drift_alerts"],
        "errors_by_kind": _error_kinds(row),
    }
    latencies = _histogram(row)
    p50, p95, p99 = histogram.quantiles(latencies, (0.50, 0.95, 0.99))
    view |= {"latency_ms_p50": p50, "latency_ms_p95": p95, "latency_ms_p99": p99, "latency_histogram": latencies}
    view |= {column: row[column] for column in _MAXES + _MINS}
    if "devices" in row:
        view["devices"] = row["devices"]
    return view


def _error_kinds(row: dict[str, Any]) -> dict[str, int]:
    """A bucket's error kinds, or (for a sum of buckets) the kinds of every bucket added up, the most frequent first."""
    return dict(_added_counts(row, _ERRORS).most_common())


def _histogram(row: dict[str, Any]) -> dict[int, int]:
    """A bucket's latency histogram, or (for a sum of buckets) every bucket's added up, by bucket index."""
    return dict(sorted((int(bucket), n) for bucket, n in _added_counts(row, _HISTOGRAM).items()))


def _added_counts(row: dict[str, Any], column: str) -> Counter[str]:
    """A bucket's JSON object of counts, or a fleet bucket's (a JSON array of each device's object) added up."""
    if f"{column}_list" in row:
        objects = json.loads(row[f"{column}_list"] or "[]")
    else:
        objects = [json.loads(row[column])] if row.get(column) else []
    total: Counter[str] = Counter()
    for counts in objects:
        total.update(counts)
    return total


def fleet_rollup_sql(resolution: Resolution, *, device_class: bool) -> str:
    """Buckets summed over devices (optionally of one class): exact, since buckets hold only sums, minima and maxima."""
    aggregates = [f"sum(r.{c}) as {c}" for c in _SUMS] + [f"max(r.{c}) as {c}" for c in _MAXES]
    aggregates += [f"min(r.{c}) as {c}" for c in _MINS]
    for column in (_ERRORS, _HISTOGRAM):
        aggregates.append(f"json_group_array(json(r.{column})) filter (where r.{column} is not null) as {column}_list")
    join = " join devices d on d.device_id = r.device_id and d.device_class = :device_class" if device_class else ""
    return (
        f"select r.bucket_start, count(distinct r.device_id) as devices, {', '.join(aggregates)}"
        f" from {rollup_table(resolution)} r{join} where r.bucket_start >= :since"
        " group by r.bucket_start order by r.bucket_start desc limit :limit"
    )


class TelemetryPruner:
    """Deletes telemetry past retention at start and then every ``interval_s``, until stopped."""

    def __init__(self, db: FleetDB, retention: TelemetryRetentionConfig) -> None:
        self.db = db
        self.retention = retention
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="telemetry-pruner", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def prune_once(self) -> dict[str, int]:
        r = self.retention
        deleted = self.db.prune_telemetry(
            raw_days=r.raw_days, minute_days=r.minute_days, hour_days=r.hour_days, stop=self._stop
        )
        if any(deleted.values()):
            log.info("telemetry pruned: %s", ", ".join(f"{table} {n}" for table, n in deleted.items()))
        return deleted

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.prune_once()
            except Exception:  # a failed prune is retried at the next interval; ingest goes on
                log.exception("telemetry prune failed")
            self._stop.wait(self.retention.prune_interval_s)
