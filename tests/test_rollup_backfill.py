"""The schema 8 migration: rollups built for raw telemetry stored before rollups existed, on real SQLite files."""

from __future__ import annotations

import functools
import logging
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlite_utils
from sqlite_utils.db import Table

from edgefleet.coordinator.store import migrations, sqlite_rollups
from edgefleet.coordinator.store.sqlite import SQLiteStore
from edgefleet.coordinator.store.sqlite_rollups import backfill_rollups
from edgefleet.coordinator.telemetry.rollups import RESOLUTIONS, RollupBatch
from edgefleet.protocol.messages import Telemetry

T0 = datetime(2025, 6, 1, 10, 0, tzinfo=UTC)  # in the past, so ingest buckets these reports by when they were sent


def _report(device_id: str, at: datetime, **fields: Any) -> Telemetry:
    values: dict[str, Any] = {"window_s": 10.0, "inference_count": 10, "error_count": 0} | fields
    return Telemetry(device_id=device_id, sent_at=at, **values)


def _history() -> list[Telemetry]:
    """Reports of two devices over two hours, with the figures a schema 3 store kept."""
    return [
        _report("gw-1", T0 + timedelta(seconds=5), latency_ms_mean=2.5, latency_ms_p95=4.0, cpu_percent=12.5,
                rss_bytes=100, soc_temp_c=50.0, runtime_skipped=["tensorrt"]),
        _report("gw-1", T0 + timedelta(seconds=40), inference_count=30, error_count=2, latency_ms_mean=4.0,
                drift_score=0.25, drift_alert=True, drift_features={"x": 0.5}, outbox_pending=3),
        _report("gw-1", T0 + timedelta(minutes=1, seconds=10), inference_count=5),
        _report("gw-1", T0 + timedelta(hours=1, minutes=30), error_count=1, latency_ms_mean=8.0,
                outbox_dropped={"telemetry": 2}),
        _report("gw-2", T0 + timedelta(seconds=20), inference_count=7, cpu_percent=50.0, rss_bytes=300),
        _report("gw-2", T0 + timedelta(minutes=59, seconds=59), inference_count=1, soc_temp_c=61.5),
    ]  # fmt: skip


def _schema_3_store(path: Path) -> sqlite_utils.Database:
    """A store as a coordinator from before rollups left it: tables of schemas 1 to 3, ``user_version`` 3."""
    old = sqlite_utils.Database(sqlite3.connect(str(path), isolation_level=None))
    for migration in (migrations.schema_1, migrations.schema_2, migrations.schema_3):
        migration(old)
    old.execute("pragma user_version = 3")
    return old


def _store_raw(db: sqlite_utils.Database, messages: list[Telemetry], delay: timedelta = timedelta(seconds=2)) -> None:
    """Insert reports as an old coordinator did: only the columns its table had, no rollups, ``delay`` after sending."""
    telemetry = Table(db, "telemetry")
    columns = set(telemetry.columns_dict)
    for message in messages:
        row = {k: v for k, v in message.model_dump(mode="json").items() if k in columns}
        telemetry.insert(row | {"received_at": (message.sent_at + delay).isoformat()})


def _rollups(
    db: SQLiteStore, devices: tuple[str, ...] = ("gw-1", "gw-2")
) -> dict[tuple[str, str], list[dict[str, Any]]]:
    return {(d, r): db.telemetry_rollups(d, r, limit=10_000) for d in devices for r in RESOLUTIONS}


def _live(path: Path, messages: list[Telemetry]) -> SQLiteStore:
    live = SQLiteStore(path)
    live.add_telemetry_batch(messages)
    return live


def test_a_schema_3_store_gets_the_rollups_live_ingest_makes(tmp_path: Path) -> None:
    old = _schema_3_store(tmp_path / "fleet.db")
    _store_raw(old, _history())
    old.conn.close()

    db = SQLiteStore(tmp_path / "fleet.db")

    backfilled = _rollups(db)
    assert backfilled == _rollups(_live(tmp_path / "live.db", _history()))
    assert [b["reports"] for b in backfilled["gw-1", "hour"]] == [1, 3]  # the history is there, not just a table
    assert len(db.telemetry("gw-1")) == 4  # the raw rows stay as they were


def test_the_backfill_works_in_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old = _schema_3_store(tmp_path / "fleet.db")
    _store_raw(old, _history())
    old.conn.close()
    monkeypatch.setattr(migrations, "backfill_rollups", functools.partial(backfill_rollups, chunk=2))

    db = SQLiteStore(tmp_path / "fleet.db")

    assert _rollups(db) == _rollups(_live(tmp_path / "live.db", _history()))  # buckets split over chunks add up


def test_a_backfill_interrupted_half_way_leaves_nothing_and_the_rerun_counts_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "fleet.db"
    old = _schema_3_store(path)
    _store_raw(old, _history())
    old.conn.close()
    monkeypatch.setattr(migrations, "backfill_rollups", functools.partial(backfill_rollups, chunk=2))
    write, calls = sqlite_rollups.write_rollups, []

    def crash_on_the_second_chunk(conn: sqlite3.Connection, batch: RollupBatch) -> None:
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the coordinator stopped mid-migration: a fault not caused otherwise
        write(conn, batch)

    with monkeypatch.context() as patch:
        patch.setattr(sqlite_rollups, "write_rollups", crash_on_the_second_chunk)
        with pytest.raises(KeyboardInterrupt):
            SQLiteStore(path)

    conn = sqlite3.connect(path)
    assert conn.execute("pragma user_version").fetchone()[0] == 7
    assert conn.execute("select count(*) from telemetry_minute").fetchone()[0] == 0  # the first chunk rolled back
    conn.close()
    db = SQLiteStore(path)
    assert _rollups(db) == _rollups(_live(tmp_path / "live.db", _history()))


def test_a_rerun_after_a_finished_backfill_adds_nothing(tmp_path: Path) -> None:
    path = tmp_path / "fleet.db"
    old = _schema_3_store(path)
    _store_raw(old, _history())
    old.conn.close()
    before = _rollups(SQLiteStore(path))
    # Stopped after the backfill committed but before its version was recorded: it runs again.
    sqlite3.connect(path, isolation_level=None).execute("pragma user_version = 7")

    after = _rollups(SQLiteStore(path))

    assert after == before


def test_older_rows_of_a_device_with_rollups_are_added_before_its_newer_buckets(tmp_path: Path) -> None:
    path = tmp_path / "fleet.db"
    older = [m for m in _history() if m.device_id == "gw-1"]  # 10:00 to 11:30
    newer = [
        _report("gw-1", T0 + timedelta(hours=1, minutes=45), errors_by_kind={"runtime": 1}, error_count=1,
                latency_ms_p99=9.0, disk_free_bytes=1000),
        _report("gw-1", T0 + timedelta(hours=2, minutes=5), inference_count=3),
        _report("gw-2", T0 + timedelta(minutes=30), inference_count=4, disk_used_percent=40.0),
    ]  # fmt: skip
    store = _live(path, newer)  # a coordinator with rollups got the newer reports
    newer_minutes = {d: store.telemetry_rollups(d, "minute") for d in ("gw-1", "gw-2")}
    _store_raw(store.db, older)  # ... while the older ones had come in before it kept rollups
    store.db.execute("pragma user_version = 7")
    store.db.conn.close()

    db = SQLiteStore(path)

    assert _rollups(db) == _rollups(_live(tmp_path / "live.db", older + newer))
    minutes = {d: db.telemetry_rollups(d, "minute") for d in ("gw-1", "gw-2")}
    assert minutes["gw-2"] == newer_minutes["gw-2"]  # no older rows: nothing changed
    assert minutes["gw-1"][: len(newer_minutes["gw-1"])] == newer_minutes["gw-1"]  # newest first: untouched
    assert len(minutes["gw-1"]) == len(newer_minutes["gw-1"]) + 3
    [_, shared, _] = db.telemetry_rollups("gw-1", "hour")  # 11:00 holds an older report and a newer one
    assert (shared["reports"], shared["errors_by_kind"]) == (2, {"runtime": 1})


def test_rows_that_are_not_reports_are_skipped_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    old = _schema_3_store(tmp_path / "fleet.db")
    _store_raw(old, _history())
    good = {"device_id": "gw-1", "received_at": T0.isoformat(), "sent_at": T0.isoformat(), "window_s": 10.0,
            "inference_count": 1, "error_count": 0}  # fmt: skip
    Table(old, "telemetry").insert_all([
        good | {"message_id": "a" * 32, "inference_count": None},
        good | {"message_id": "b" * 32, "sent_at": "yesterday"},
        good | {"message_id": "c" * 32, "runtime_skipped": "[not json"},
        good | {"message_id": "d" * 32, "received_at": None},
        good | {"message_id": "e" * 32, "error_count": -1},
    ])  # fmt: skip
    old.conn.close()

    with caplog.at_level(logging.WARNING, logger="edgefleet.coordinator.telemetry.rollups"):
        db = SQLiteStore(tmp_path / "fleet.db")

    assert _rollups(db) == _rollups(_live(tmp_path / "live.db", _history()))
    [warning] = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert "skipped 5 raw telemetry rows" in warning.getMessage()
