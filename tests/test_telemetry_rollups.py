"""Telemetry rollups kept at ingest, their retention, their REST routes and their migration: on real SQLite
files and, where a server answers, in PostgreSQL databases of their own (the ``db`` fixture is both)."""

from __future__ import annotations

import sqlite3
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlite_utils
from fastapi.testclient import TestClient

from edgefleet.coordinator.config import TelemetryRetentionConfig
from edgefleet.coordinator.store import FleetStore, migrations
from edgefleet.coordinator.store.sqlite import SQLiteStore
from edgefleet.coordinator.telemetry.retention import TelemetryPruner
from edgefleet.coordinator.telemetry.rows import prepare
from edgefleet.local.fleet import wait_until
from edgefleet.protocol import histogram
from edgefleet.protocol.messages import ReportedState, Telemetry, parse

T0 = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
TOKEN = "rollups-token-0123456789"


@pytest.fixture
def db(fleet_store: FleetStore) -> FleetStore:
    return fleet_store


def _report(device_id: str = "gw-1", at: datetime = T0, **fields: Any) -> Telemetry:
    values: dict[str, Any] = {"window_s": 10.0, "inference_count": 10, "error_count": 0} | fields
    return Telemetry(device_id=device_id, sent_at=at, **values)


def _by_start(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {row["bucket_start"]: row for row in rows}


def _count(path: Path, table: str) -> int:
    return int(sqlite3.connect(path).execute(f"select count(*) from {table}").fetchone()[0])


def _raw(db: FleetStore, device_id: str = "gw-1") -> int:
    return len(db.telemetry(device_id, limit=10**6))


def _arrived(db: FleetStore, reports: list[tuple[Telemetry, datetime]]) -> None:
    """Store reports as if each arrived at its time."""
    db.add_reports([prepare(message, received_at) for message, received_at in reports])


def test_reports_in_one_bucket_add_up_and_means_are_derived_on_read(db: FleetStore) -> None:
    first = _report(at=T0 + timedelta(seconds=5), inference_count=10, error_count=0, latency_ms_mean=2.0,
                    latency_ms_p95=3.0, cpu_percent=10.0, rss_bytes=100, soc_temp_c=50.0, drift_score=0.1)  # fmt: skip
    second = _report(at=T0 + timedelta(seconds=40), inference_count=30, error_count=2, latency_ms_mean=4.0,
                     latency_ms_p95=8.0, cpu_percent=30.0, rss_bytes=300, soc_temp_c=55.0, drift_score=0.3,
                     drift_alert=True, outbox_pending=4)  # fmt: skip
    bare = _report(at=T0 + timedelta(minutes=1, seconds=10), inference_count=5)  # no latency, cpu, temperature
    later = _report(at=T0 + timedelta(hours=1, minutes=30), inference_count=1, error_count=1, latency_ms_mean=9.0)
    assert db.add_telemetry_batch([first, bare]) == 2
    assert db.add_telemetry_batch([second, later]) == 2  # a second batch lands in buckets the first made

    minutes = _by_start(db.telemetry_rollups("gw-1", "minute"))
    hours = _by_start(db.telemetry_rollups("gw-1", "hour"))

    assert list(minutes) == ["2026-03-01T11:30:00+00:00", "2026-03-01T10:01:00+00:00", "2026-03-01T10:00:00+00:00"]
    m = minutes["2026-03-01T10:00:00+00:00"]
    assert (m["reports"], m["inference_count"], m["error_count"], m["window_s"]) == (2, 40, 2, 20.0)
    assert m["error_rate"] == pytest.approx(2 / 42)
    assert m["latency_ms_mean"] == pytest.approx((2.0 * 10 + 4.0 * 30) / 40)  # per inference, not per report
    assert m["cpu_percent_mean"] == pytest.approx(20.0)
    assert (m["latency_ms_mean_max"], m["latency_ms_p95_max"], m["rss_bytes_max"]) == (4.0, 8.0, 300)
    assert (m["soc_temp_c_max"], m["drift_score_max"], m["drift_alerts"], m["outbox_pending_max"]) == (55.0, 0.3, 1, 4)
    empty = minutes["2026-03-01T10:01:00+00:00"]
    assert (empty["reports"], empty["inference_count"], empty["error_rate"]) == (1, 5, 0.0)
    assert empty["latency_ms_mean"] is None and empty["cpu_percent_mean"] is None and empty["soc_temp_c_max"] is None
    assert list(hours) == ["2026-03-01T11:00:00+00:00", "2026-03-01T10:00:00+00:00"]
    h = hours["2026-03-01T10:00:00+00:00"]
    assert (h["reports"], h["inference_count"], h["error_count"]) == (3, 45, 2)
    assert h["latency_ms_mean"] == pytest.approx(3.5)  # the report without latency adds no weight
    assert h["cpu_percent_mean"] == pytest.approx(20.0)
    assert hours["2026-03-01T11:00:00+00:00"]["error_rate"] == pytest.approx(0.5)


def test_since_and_limit_select_the_newest_buckets(db: FleetStore) -> None:
    db.add_telemetry_batch([_report(at=T0 + timedelta(minutes=i)) for i in range(5)])

    starts = lambda **kw: [r["bucket_start"][11:16] for r in db.telemetry_rollups("gw-1", "minute", **kw)]  # noqa: E731

    assert starts() == ["10:04", "10:03", "10:02", "10:01", "10:00"]
    assert starts(limit=2) == ["10:04", "10:03"]
    assert starts(since=T0 + timedelta(minutes=2, seconds=30)) == ["10:04", "10:03", "10:02"]  # its bucket included
    assert db.telemetry_rollups("gw-2", "minute") == []


def test_a_duplicate_delivery_is_counted_once(db: FleetStore) -> None:
    message = _report(inference_count=7)
    assert db.add_telemetry_batch([message, message]) == 1  # twice in one batch
    assert not db.add_telemetry(message)  # and again later

    [minute] = db.telemetry_rollups("gw-1", "minute")
    [hour] = db.telemetry_rollups("gw-1", "hour")

    assert (minute["reports"], minute["inference_count"]) == (1, 7)
    assert (hour["reports"], hour["inference_count"]) == (1, 7)
    assert _raw(db) == 1


def test_raw_rows_and_rollups_are_stored_together_or_not_at_all(tmp_path: Path, db: FleetStore) -> None:
    def rename(old: str, new: str) -> None:  # a fault in the rollup write, after the raw insert
        if isinstance(db, SQLiteStore):
            with sqlite3.connect(tmp_path / "fleet.db") as other:
                other.execute(f"alter table {old} rename to {new}")
        else:
            import psycopg

            with psycopg.connect(db.url, autocommit=True) as other:  # type: ignore[attr-defined]
                other.execute(f"alter table {old} rename to {new}")

    batch = [_report(), _report(at=T0 + timedelta(minutes=1))]
    rename("telemetry_hour", "telemetry_hour_away")

    with pytest.raises(Exception, match="telemetry_hour"):
        db.add_telemetry_batch(batch)

    assert _raw(db) == 0
    assert db.telemetry_rollups("gw-1", "minute") == []
    rename("telemetry_hour_away", "telemetry_hour")
    assert db.add_telemetry_batch(batch) == 2  # nothing of the failed batch was kept, not even its message ids


def test_a_device_clock_ahead_cannot_make_future_buckets(db: FleetStore) -> None:
    before = datetime.now(UTC).replace(second=0, microsecond=0)
    db.add_telemetry(_report(at=datetime.now(UTC) + timedelta(days=3)))

    [minute] = db.telemetry_rollups("gw-1", "minute")

    assert before <= datetime.fromisoformat(minute["bucket_start"]) <= datetime.now(UTC)


def test_a_non_finite_value_counts_as_absent(db: FleetStore) -> None:
    payload = (
        b'{"device_id": "gw-1", "sent_at": "2026-03-01T10:00:00Z", "window_s": 10, "inference_count": 4,'
        b' "error_count": 0, "cpu_percent": NaN, "soc_temp_c": Infinity, "latency_ms_mean": 2.0}'
    )
    db.add_telemetry_batch([parse(Telemetry, payload), _report(at=T0, cpu_percent=30.0)])

    [minute] = db.telemetry_rollups("gw-1", "minute")

    assert (minute["reports"], minute["cpu_percent_mean"], minute["soc_temp_c_max"]) == (2, 30.0, None)


def test_fleet_rollups_sum_devices_and_filter_by_class(db: FleetStore) -> None:
    for device_id, device_class in (("pi-1", "rpi4"), ("pi-2", "rpi4"), ("gw-1", "x86-gateway")):
        db.record_reported(
            ReportedState(
                device_id=device_id, device_class=device_class, agent_version="t", status="ready", started_at=T0
            )
        )
    db.add_telemetry_batch([
        _report("pi-1", inference_count=10, latency_ms_mean=1.0, soc_temp_c=60.0),
        _report("pi-2", inference_count=30, latency_ms_mean=3.0, soc_temp_c=70.0),
        _report("gw-1", inference_count=60, latency_ms_mean=10.0, soc_temp_c=40.0),
    ])  # fmt: skip

    [fleet] = db.fleet_rollups("minute")
    [rpi4] = db.fleet_rollups("minute", device_class="rpi4")

    assert (fleet["devices"], fleet["reports"], fleet["inference_count"]) == (3, 3, 100)
    assert fleet["latency_ms_mean"] == pytest.approx((10 + 90 + 600) / 100)
    assert (rpi4["devices"], rpi4["inference_count"], rpi4["soc_temp_c_max"]) == (2, 40, 70.0)
    assert rpi4["latency_ms_mean"] == pytest.approx(2.5)
    assert db.fleet_rollups("minute", device_class="jetson") == []


def test_prune_deletes_exactly_what_is_past_retention(db: FleetStore) -> None:
    now = datetime(2026, 6, 1, 12, 0, 30, tzinfo=UTC)
    minute_cutoff, hour_cutoff = now - timedelta(days=30), now - timedelta(days=365)
    _arrived(db, [  # sent at the rollup cutoffs, received up to a week back
        (_report(at=minute_cutoff - timedelta(seconds=31)), now - timedelta(days=7, seconds=1)),  # minute 11:59,
        # ends at 12:00 <= cutoff: goes; received more than 7 days ago: goes
        (_report(at=minute_cutoff - timedelta(seconds=29)), now - timedelta(days=7)),  # minute 12:00 holds the cutoff
        (_report(at=hour_cutoff - timedelta(minutes=1)), now - timedelta(days=6)),  # hour 11:00 ends at 12:00: goes
        (_report(at=hour_cutoff), now),  # hour 12:00 holds the cutoff: stays
    ])  # fmt: skip
    minutes_before = {r["bucket_start"] for r in db.telemetry_rollups("gw-1", "minute", limit=100)}
    hours_before = {r["bucket_start"] for r in db.telemetry_rollups("gw-1", "hour", limit=100)}

    deleted = db.prune_telemetry(now=now, raw_days=7, minute_days=30, hour_days=365, chunk=1)

    assert deleted == {"telemetry": 1, "telemetry_minute": 3, "telemetry_hour": 1}
    assert _raw(db) == 3  # the row received exactly 7 days ago is not older than 7 days
    minutes = {r["bucket_start"] for r in db.telemetry_rollups("gw-1", "minute", limit=100)}
    hours = {r["bucket_start"] for r in db.telemetry_rollups("gw-1", "hour", limit=100)}
    assert minutes_before - minutes == {
        "2025-06-01T11:59:00+00:00", "2025-06-01T12:00:00+00:00", "2026-05-02T11:59:00+00:00",
    }  # fmt: skip
    assert minutes == {"2026-05-02T12:00:00+00:00"}
    assert hours_before - hours == {"2025-06-01T11:00:00+00:00"}
    assert db.prune_telemetry(now=now) == {"telemetry": 0, "telemetry_minute": 0, "telemetry_hour": 0}


def test_the_pruner_prunes_at_start_and_stops_on_request(db: FleetStore) -> None:
    db.add_telemetry(_report(at=datetime.now(UTC) - timedelta(days=40)))
    pruner = TelemetryPruner(db, TelemetryRetentionConfig(minute_days=30, prune_interval_s=3600))

    pruner.start()
    wait_until(lambda: db.telemetry_rollups("gw-1", "minute") == [], timeout=10, what="the first prune")
    pruner.stop()

    assert pruner._thread is not None and not pruner._thread.is_alive()
    assert len(db.telemetry_rollups("gw-1", "hour")) == 1  # within the year
    assert _raw(db) == 1  # received just now


def test_retention_config_has_defaults_and_forbids_unknown_keys() -> None:
    from pydantic import ValidationError

    assert TelemetryRetentionConfig() == TelemetryRetentionConfig(raw_days=7, minute_days=30, hour_days=365)
    with pytest.raises(ValidationError):
        TelemetryRetentionConfig(raw_dys=3)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        TelemetryRetentionConfig(raw_days=0)


def test_rollup_endpoints_need_a_token_and_are_bounded(tmp_path: Path) -> None:
    from edgefleet.coordinator.api.app import create_app
    from edgefleet.coordinator.config import BrokerConfig, CoordinatorConfig
    from edgefleet.coordinator.service import Coordinator
    from edgefleet.protocol.signing import generate_keypair

    (tmp_path / "k.pub").write_bytes(generate_keypair()[1])
    config = CoordinatorConfig(data_dir=tmp_path / "c", trusted_keys=[tmp_path / "k.pub"], broker=BrokerConfig())
    coordinator = Coordinator(config)
    coordinator.db.add_telemetry_batch([
        _report(at=T0, inference_count=10, error_count=10, latency_ms_mean=2.0,
                errors_by_kind={"invalid_argument": 10}, latency_ms_p99=9.0, disk_free_bytes=1000),
        _report(at=T0 + timedelta(seconds=30), inference_count=30, latency_ms_mean=6.0, disk_used_percent=42.0),
        _report(at=T0 + timedelta(hours=2), inference_count=1),
    ])  # fmt: skip
    http = TestClient(create_app(coordinator, token=TOKEN))  # no lifespan: no broker needed
    auth = {"Authorization": f"Bearer {TOKEN}"}
    url = "/api/v1/devices/gw-1/telemetry/rollups"

    assert http.get(url).status_code == 401
    minutes = http.get(url, headers=auth)
    hours = http.get(url, params={"resolution": "hour", "since": "2026-03-01T11:00:00Z"}, headers=auth)
    fleet = http.get("/api/v1/telemetry/rollups", params={"limit": 1}, headers=auth)

    assert minutes.status_code == 200
    assert [b["bucket_start"] for b in minutes.json()] == ["2026-03-01T12:00:00+00:00", "2026-03-01T10:00:00+00:00"]
    bucket = minutes.json()[1]
    assert (bucket["reports"], bucket["inference_count"], bucket["error_count"]) == (2, 40, 10)
    assert bucket["error_rate"] == pytest.approx(0.2)
    assert bucket["latency_ms_mean"] == pytest.approx(5.0)
    assert bucket["errors_by_kind"] == {"invalid_argument": 10}
    assert (bucket["latency_ms_p99_max"], bucket["disk_free_bytes_min"], bucket["disk_used_percent_max"]) == (
        9.0, 1000, 42.0,
    )  # fmt: skip
    assert [b["bucket_start"] for b in hours.json()] == ["2026-03-01T12:00:00+00:00"]
    assert [(b["devices"], b["inference_count"], b["errors_by_kind"]) for b in fleet.json()] == [(1, 1, {})]
    for bad in ({"resolution": "day"}, {"limit": 0}, {"limit": 10**6}, {"since": "yesterday"}):
        assert http.get(url, params=bad, headers=auth).status_code == 422, bad


def test_a_version_3_database_gets_the_rollup_tables_on_open(tmp_path: Path) -> None:
    path = tmp_path / "fleet.db"
    old = sqlite_utils.Database(path)
    for migration in (migrations.schema_1, migrations.schema_2, migrations.schema_3):
        migration(old)
    old.execute("pragma user_version = 3")
    old.conn.close()

    db = SQLiteStore(path)
    db.add_telemetry(_report())

    conn = sqlite3.connect(path)
    tables = {row[0] for row in conn.execute("select name from sqlite_master where type = 'table'")}
    assert {"telemetry_minute", "telemetry_hour"} <= tables
    assert conn.execute("pragma user_version").fetchone()[0] == SQLiteStore.SCHEMA_VERSION
    assert [r["reports"] for r in db.telemetry_rollups("gw-1", "hour")] == [1]
    SQLiteStore(path)  # opening again at the current version changes nothing


def test_p99_disk_and_error_kinds_are_kept_per_bucket(db: FleetStore) -> None:
    db.add_telemetry_batch([
        _report(at=T0 + timedelta(seconds=5), error_count=3, errors_by_kind={"invalid_argument": 2, "runtime": 1},
                latency_ms_p99=7.0, disk_free_bytes=5_000, disk_used_percent=80.0),
        _report(at=T0 + timedelta(seconds=20), error_count=4, errors_by_kind={"invalid_argument": 4},
                latency_ms_p99=12.0, disk_free_bytes=4_000, disk_used_percent=85.0),
    ])  # fmt: skip
    db.add_telemetry_batch([  # later batches merge into the stored bucket
        _report(at=T0 + timedelta(seconds=40), error_count=1, errors_by_kind={"unavailable": 1},
                latency_ms_p99=9.0, disk_free_bytes=4_500, disk_used_percent=82.5),
    ])  # fmt: skip
    db.add_telemetry_batch([_report(at=T0 + timedelta(seconds=50))])  # an older agent: none of the new figures
    db.add_telemetry_batch(
        [_report(at=T0 + timedelta(minutes=5), error_count=5, errors_by_kind={"runtime": 5}, disk_used_percent=91.0)]
    )

    minutes = _by_start(db.telemetry_rollups("gw-1", "minute"))
    [hour] = db.telemetry_rollups("gw-1", "hour")

    m = minutes["2026-03-01T10:00:00+00:00"]
    assert m["errors_by_kind"] == {"invalid_argument": 6, "runtime": 1, "unavailable": 1}
    assert sum(m["errors_by_kind"].values()) == m["error_count"] == 8
    assert (m["latency_ms_p99_max"], m["disk_used_percent_max"], m["disk_free_bytes_min"]) == (12.0, 85.0, 4_000)
    assert minutes["2026-03-01T10:05:00+00:00"]["disk_free_bytes_min"] is None
    assert hour["errors_by_kind"] == {"invalid_argument": 6, "runtime": 6, "unavailable": 1}
    assert (hour["latency_ms_p99_max"], hour["disk_used_percent_max"], hour["disk_free_bytes_min"]) == (
        12.0, 91.0, 4_000,
    )  # fmt: skip
    no_errors = _report(device_id="gw-2")
    db.add_telemetry(no_errors)
    [quiet] = db.telemetry_rollups("gw-2", "minute")
    assert quiet["errors_by_kind"] == {} and quiet["latency_ms_p99_max"] is None


def test_a_bucket_keeps_only_the_most_frequent_error_kinds(db: FleetStore) -> None:
    from edgefleet.coordinator.telemetry.rollups import MAX_BUCKET_ERROR_KINDS

    kinds = [f"kind_{i:02d}" for i in range(MAX_BUCKET_ERROR_KINDS + 8)]
    for start in range(0, len(kinds), 10):  # 16 kinds at most per message: several reports and batches
        chunk = {kind: 100 - i for i, kind in enumerate(kinds) if start <= i < start + 10}
        db.add_telemetry(_report(at=T0 + timedelta(seconds=start), error_count=sum(chunk.values()),
                                 errors_by_kind=chunk))  # fmt: skip

    [minute] = db.telemetry_rollups("gw-1", "minute")

    assert list(minute["errors_by_kind"]) == kinds[:MAX_BUCKET_ERROR_KINDS]  # the most frequent first


def test_fleet_rollups_add_error_kinds_over_devices(db: FleetStore) -> None:
    db.add_telemetry_batch([
        _report("pi-1", error_count=2, errors_by_kind={"invalid_argument": 2}, disk_free_bytes=10, latency_ms_p99=3.0),
        _report("pi-2", error_count=3, errors_by_kind={"invalid_argument": 1, "runtime": 2}, disk_free_bytes=7),
        _report("pi-3", disk_used_percent=95.5),
    ])  # fmt: skip

    [fleet] = db.fleet_rollups("minute")

    assert fleet["errors_by_kind"] == {"invalid_argument": 3, "runtime": 2}
    assert (fleet["disk_free_bytes_min"], fleet["disk_used_percent_max"], fleet["latency_ms_p99_max"]) == (7, 95.5, 3.0)


def test_a_version_5_database_gets_the_new_columns_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "fleet.db"
    old = sqlite_utils.Database(path)
    for migration in (
        migrations.schema_1,
        migrations.schema_2,
        migrations.schema_3,
        migrations.schema_4,
        migrations.schema_5,
    ):
        migration(old)
    old.execute("pragma user_version = 5")
    old["telemetry_minute"].insert({"device_id": "gw-1", "bucket_start": T0.isoformat(), "reports": 1,
                                    "inference_count": 10, "error_count": 2, "window_s": 10.0,
                                    "latency_ms_weighted_sum": 0.0, "latency_ms_weight": 0, "cpu_percent_sum": 0.0,
                                    "cpu_percent_reports": 0, "drift_alerts": 0})  # fmt: skip
    columns = set(old["telemetry_minute"].columns_dict)
    assert "errors_by_kind" not in columns and "disk_free_bytes_min" not in columns  # as schema 5 left it
    old.conn.close()

    db = SQLiteStore(path)
    db.add_telemetry(_report(at=T0 + timedelta(seconds=30), error_count=1, errors_by_kind={"runtime": 1},
                             latency_ms_p99=4.0, disk_free_bytes=1 << 30, disk_used_percent=50.0))  # fmt: skip

    conn = sqlite3.connect(path)
    assert conn.execute("pragma user_version").fetchone()[0] == SQLiteStore.SCHEMA_VERSION
    for table, added in (
        ("telemetry", {"latency_ms_p99", "errors_by_kind", "disk_free_bytes", "disk_used_percent"}),
        ("telemetry_minute", {"latency_ms_p99_max", "disk_used_percent_max", "disk_free_bytes_min", "errors_by_kind"}),
        ("telemetry_hour", {"latency_ms_p99_max", "disk_used_percent_max", "disk_free_bytes_min", "errors_by_kind"}),
    ):
        assert added <= {row[1] for row in conn.execute(f"pragma table_info({table})")}, table
    [minute] = db.telemetry_rollups("gw-1", "minute")
    assert (minute["reports"], minute["error_count"], minute["errors_by_kind"]) == (2, 3, {"runtime": 1})
    assert (minute["latency_ms_p99_max"], minute["disk_free_bytes_min"]) == (4.0, 1 << 30)
    SQLiteStore(path)  # opening again at the current version changes nothing


def test_a_nearly_full_data_disk_is_an_alert_from_the_run_of_reports_over_the_limit(db: FleetStore) -> None:
    from edgefleet.coordinator.health.alerts import AlertThresholds, compute_alerts

    now = datetime.now(UTC)
    for device_id in ("gw-1", "gw-2", "gw-3"):
        db.record_reported(
            ReportedState(device_id=device_id, device_class="x86-gateway", agent_version="t", status="ready",
                          started_at=now)
        )  # fmt: skip
    received = [now - timedelta(seconds=10 - i) for i in range(4)]  # arrival times a second apart, in order
    # gw-1 fell below the limit once; the alert dates from after that
    _arrived(db, [(_report("gw-1", at=now, disk_used_percent=used, disk_free_bytes=3 << 30), at)
                  for used, at in zip((95.0, 50.0, 92.0, 93.5), received, strict=True)])  # fmt: skip
    db.add_telemetry(_report("gw-2", at=now, disk_used_percent=89.0))
    db.add_telemetry(_report("gw-3", at=now))  # an older agent: no disk figures, no alert

    [alert] = [a for a in compute_alerts(db) if a.kind == "disk_full"]
    strict = [(a.device_id, a.kind) for a in compute_alerts(db, AlertThresholds(max_disk_used_percent=80))]

    assert (alert.device_id, alert.severity, alert.since) == ("gw-1", "warning", received[2].isoformat())
    assert "93.5% used" in alert.detail and "3072 MiB free" in alert.detail
    assert ("gw-2", "disk_full") in strict and ("gw-3", "disk_full") not in strict


def test_the_devices_cpu_and_memory_peaks_are_kept_and_a_version_8_store_gets_their_columns(tmp_path: Path) -> None:
    path = tmp_path / "fleet.db"
    old = sqlite_utils.Database(path)
    for version in range(1, 8):  # schema 8 only backfills rollups, and schema 9 comes before it in this code
        getattr(migrations, f"schema_{version}")(old)
    old.execute("pragma user_version = 8")
    assert "device_cpu_percent_max" not in old["telemetry_minute"].columns_dict
    old.conn.close()

    db = SQLiteStore(path)
    db.add_telemetry_batch([
        _report(at=T0 + timedelta(seconds=5), device_cpu_percent=35.0, memory_used_percent=61.0),
        _report(at=T0 + timedelta(seconds=15), device_cpu_percent=92.5, memory_used_percent=58.0),
        _report(at=T0 + timedelta(seconds=25)),  # an older agent: neither figure
    ])  # fmt: skip
    db.add_telemetry(_report("gw-2", at=T0 + timedelta(seconds=5), device_cpu_percent=10.0, memory_used_percent=88.0))

    [minute] = db.telemetry_rollups("gw-1", "minute")
    assert (minute["reports"], minute["device_cpu_percent_max"], minute["memory_used_percent_max"]) == (3, 92.5, 61.0)
    [fleet] = db.fleet_rollups("hour")
    assert (fleet["device_cpu_percent_max"], fleet["memory_used_percent_max"]) == (92.5, 88.0)
    assert {row["device_cpu_percent"] for row in db.telemetry("gw-1")} == {None, 92.5, 35.0}


def test_latest_figures_come_from_the_newest_recent_window_that_has_each(db: FleetStore) -> None:
    for device_id in ("gw-1", "gw-2", "gw-3"):
        db.record_reported(ReportedState(device_id=device_id, device_class="x86-gateway", agent_version="t",
                                         status="idle", started_at="2026-01-01T00:00:00Z"))  # fmt: skip
    db.add_telemetry(_report(latency_ms_p95=4.0, device_cpu_percent=10.0, soc_temp_c=50.0))
    db.add_telemetry(_report(device_cpu_percent=35.0, drift_alert=True))  # idle: no latency in this window
    db.add_telemetry(_report("gw-2", device_cpu_percent=80.0))

    latest = {row["device_id"]: row for row in db.latest_telemetry()}

    assert set(latest) == {"gw-1", "gw-2"}, "a device without telemetry has no latest figures"
    gw1 = latest["gw-1"]
    assert (gw1["latency_ms_p95"], gw1["device_cpu_percent"], gw1["soc_temp_c"], gw1["drift_alert"]) == (
        4.0, 35.0, 50.0, True,
    )  # fmt: skip
    assert db.latest_telemetry(lookback=1)[0]["latency_ms_p95"] is None, "only the last `lookback` windows count"
    assert latest["gw-2"]["latency_ms_p95"] is None and latest["gw-2"]["drift_alert"] is False


def test_minute_hour_and_fleet_percentiles_come_from_the_added_up_histograms(db: FleetStore) -> None:
    rng = np.random.default_rng(11)
    samples: dict[str, list[float]] = {"gw-1": [], "gw-2": []}
    reports = []
    for second in range(0, 60, 10):  # six windows per device in one minute
        for device_id, scale in (("gw-1", 1.0), ("gw-2", 4.0)):
            latencies = rng.lognormal(mean=np.log(scale), sigma=0.6, size=200)
            samples[device_id] += latencies.tolist()
            counts = dict(Counter(histogram.bucket_of(x) for x in latencies))
            p95 = float(np.percentile(latencies, 95))
            at = T0 + timedelta(seconds=second)
            reports.append(_report(device_id, at=at, inference_count=200, latency_histogram=counts, latency_ms_p95=p95))
    db.add_telemetry_batch(reports[:6])  # three windows per device in one batch: added up before the upsert
    for report in reports[6:]:  # then one at a time: added up by the upsert itself
        db.add_telemetry(report)

    def close(estimate: float | None, exact: float) -> bool:
        return estimate is not None and histogram.bucket_of(estimate) == histogram.bucket_of(exact)

    [minute] = db.telemetry_rollups("gw-1", "minute")
    [hour] = db.telemetry_rollups("gw-1", "hour")
    [fleet] = db.fleet_rollups("minute")
    every = samples["gw-1"] + samples["gw-2"]
    for q in (50, 95, 99):
        assert close(minute[f"latency_ms_p{q}"], float(np.percentile(samples["gw-1"], q))), (q, minute)
        assert hour[f"latency_ms_p{q}"] == minute[f"latency_ms_p{q}"]
        assert close(fleet[f"latency_ms_p{q}"], float(np.percentile(every, q))), (q, fleet)
    assert sum(minute["latency_histogram"].values()) == 1200 and sum(fleet["latency_histogram"].values()) == 2400
    # The p95 of the fleet is not the largest window p95 (what the maxima keep), nor any mean of them.
    assert fleet["latency_ms_p95"] < fleet["latency_ms_p95_max"]
    quiet = db.telemetry_rollups("gw-3", "minute")
    assert quiet == []
    db.add_telemetry(_report("gw-3"))  # an older agent: no histogram, no percentiles
    [old] = db.telemetry_rollups("gw-3", "minute")
    assert (old["latency_ms_p95"], old["latency_histogram"]) == (None, {})
