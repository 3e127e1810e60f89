"""Telemetry rollups: per-device minute and hour buckets, what a report adds to them, and how they read back.

The store keeps them (edgefleet.coordinator.store.sqlite_rollups writes and sums them in SQL).

A bucket stores sums, counts, maxima and minima only (failures per kind as counts added up), never a
mean: means are derived on read, so they stay exact however many reports (and ingest batches) land in
one bucket, and buckets of several devices add up exactly into fleet or device-class figures.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal, get_origin

from edgefleet.protocol import histogram
from edgefleet.protocol.messages import Telemetry

__all__ = [
    "CONTRIBUTION_LAYOUT",
    "ERRORS_COLUMN",
    "HISTOGRAM_COLUMN",
    "MAX_BUCKET_ERROR_KINDS",
    "MAX_COLUMNS",
    "MIN_COLUMNS",
    "RESOLUTIONS",
    "ROLLUP_COLUMNS_6",
    "ROLLUP_COLUMNS_9",
    "ROLLUP_COLUMN_TYPES",
    "ROLLUP_SCHEMA",
    "SUM_COLUMNS",
    "TELEMETRY_JSON_FIELDS",
    "Resolution",
    "RollupBatch",
    "bucket_start",
    "contribution",
    "report_from_row",
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
# The bucket columns by how two buckets combine (the store's SQL adds, maximises and minimises them so).
SUM_COLUMNS, MAX_COLUMNS, MIN_COLUMNS, ERRORS_COLUMN, HISTOGRAM_COLUMN = _SUMS, _MAXES, _MINS, _ERRORS, _HISTOGRAM
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

    def rows(self) -> dict[Resolution, list[tuple[Any, ...]]]:
        """Every bucket's row to upsert (``device_id, bucket_start, *ROLLUP_VALUE_COLUMNS``), by resolution."""
        hours: dict[tuple[str, int], list[Any]] = {}
        for (device_id, minute), values in self._minutes.items():
            key = (device_id, minute // 3600 * 3600)
            current = hours.get(key)
            if current is None:
                hours[key] = list(values)  # the counts stay shared until a merge replaces them
            else:
                _merge(current, values)
        by_resolution: tuple[tuple[Resolution, dict[tuple[str, int], list[Any]]], ...] = (
            ("minute", self._minutes),
            ("hour", hours),
        )
        return {
            resolution: [
                (device_id, _iso(start), *values[:-2], _error_kinds_json(values[-2]), _histogram_json(values[-1]))
                for (device_id, start), values in buckets.items()
            ]
            for resolution, buckets in by_resolution
        }


# Stored as JSON text, like every list and dict of a report (coordinator/telemetry/rows.py writes them so).
TELEMETRY_JSON_FIELDS = frozenset(
    n for n, f in Telemetry.model_fields.items() if get_origin(f.annotation) in (list, dict)
)
# NULL in a column of the report means the column came after the row (the model's default applies), but a
# row without these was never a report: leaving them to their default factories would invent them.
_NOT_DEFAULTED = frozenset({"message_id", "sent_at"})


def report_from_row(row: dict[str, Any]) -> tuple[Telemetry, datetime]:
    """A raw telemetry row as the report it was stored from, and its arrival; ValueError or TypeError if not one."""
    received_at = datetime.fromisoformat(row.pop("received_at"))
    fields = {
        name: json.loads(value) if name in TELEMETRY_JSON_FIELDS and isinstance(value, str) else value
        for name, value in row.items()
        if value is not None or name in _NOT_DEFAULTED
    }
    return Telemetry.model_validate(fields), received_at if received_at.tzinfo else received_at.replace(tzinfo=UTC)


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
