"""The fleet store's schema, migration by migration: every table and column is made here.

A store file records in ``user_version`` how many migrations it has had; opening it applies the newer
ones in order. sqlite-utils commits each step itself, so every migration is written to be idempotent:
one interrupted half way simply runs again at the next start.
"""

from __future__ import annotations

from collections.abc import Callable

import sqlite_utils
from sqlite_utils.db import Table

from edgefleet.coordinator.errors import StoreError
from edgefleet.coordinator.store.sqlite_rollups import backfill_rollups
from edgefleet.coordinator.telemetry.rollups import (
    RESOLUTIONS,
    ROLLUP_COLUMN_TYPES,
    ROLLUP_COLUMNS_6,
    ROLLUP_COLUMNS_9,
    ROLLUP_SCHEMA,
    rollup_table,
)

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "StoreTooNew", "add_columns", "migrate"]


class StoreTooNew(StoreError):
    """The file was written by a newer coordinator: its schema has migrations this code does not know."""


def schema_1(db: sqlite_utils.Database) -> None:
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


def schema_2(db: sqlite_utils.Database) -> None:
    """Device groups and tags; registry stages with their history; drift in telemetry."""
    add_columns(db, "devices", {"tags": str, "group_name": str})
    Table(db, "stages").create(
        {"model": str, "version": str, "stage": str, "updated_at": str}, pk=("model", "version"), if_not_exists=True
    )
    add_columns(db, "telemetry", {"drift_score": float, "drift_alert": int, "drift_features": str})
    Table(db, "stage_history").create(
        {"id": int, "model": str, "version": str, "stage": str, "previous": str, "at": str},
        pk="id",
        if_not_exists=True,
    )


def schema_3(db: sqlite_utils.Database) -> None:
    """Commands sent to devices and their results."""
    Table(db, "commands").create(
        {
            "command_id": str, "device_id": str, "name": str, "args": str, "sent_at": str,
            "ok": int, "detail": str, "completed_at": str,
        },
        pk="command_id", if_not_exists=True,
    )  # fmt: skip
    Table(db, "commands").create_index(["device_id", "sent_at"], if_not_exists=True)


def schema_4(db: sqlite_utils.Database) -> None:
    """Per-device telemetry rollups by minute and by hour; raw telemetry indexed by arrival for pruning."""
    for resolution in RESOLUTIONS:
        table = Table(db, rollup_table(resolution))
        table.create(ROLLUP_SCHEMA, pk=("device_id", "bucket_start"), if_not_exists=True)
        table.create_index(["bucket_start"], if_not_exists=True)  # retention and fleet-wide reads
    Table(db, "telemetry").create_index(["received_at"], if_not_exists=True)


def schema_5(db: sqlite_utils.Database) -> None:
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


def schema_6(db: sqlite_utils.Database) -> None:
    """p99 latency, disk usage and failures by kind: in raw telemetry and in the rollups."""
    add_columns(db, "telemetry", {
        "latency_ms_p99": float, "errors_by_kind": str, "disk_free_bytes": int, "disk_used_percent": float,
    })  # fmt: skip
    for resolution in RESOLUTIONS:
        add_columns(db, rollup_table(resolution), ROLLUP_COLUMNS_6)


def schema_7(db: sqlite_utils.Database) -> None:
    """Output confidence drift in raw telemetry."""
    add_columns(db, "telemetry", {"confidence_drift_score": float})


def schema_8(db: sqlite_utils.Database) -> None:
    """Rollups for the raw telemetry stored before schema 4 kept them, in one transaction that a
    rerun cannot count twice (see ``backfill_rollups``)."""
    for resolution in RESOLUTIONS:  # the backfill writes every rollup column this code knows
        add_columns(db, rollup_table(resolution), ROLLUP_COLUMN_TYPES)
    backfill_rollups(db.conn)


def schema_9(db: sqlite_utils.Database) -> None:
    """The whole device's CPU and memory use and the latency histogram: in raw telemetry and in the
    rollups (a store migrated from before schema 8 got every rollup column there)."""
    add_columns(db, "telemetry", {"device_cpu_percent": float, "memory_used_percent": float, "latency_histogram": str})
    for resolution in RESOLUTIONS:
        add_columns(db, rollup_table(resolution), ROLLUP_COLUMNS_9)


def schema_10(db: sqlite_utils.Database) -> None:
    """API tokens, enrollment tokens, device identities, rollouts and their events: tables their services
    made when they started, before the store made every table (existing files have them already)."""
    Table(db, "api_tokens").create(
        {
            "token_id": str, "token_hash": str, "name": str, "role": str, "created_at": str, "created_by": str,
            "expires_at": str, "revoked_at": str,
        },
        pk="token_id", if_not_exists=True,
    )  # fmt: skip
    Table(db, "api_tokens").create_index(["token_hash"], unique=True, if_not_exists=True)
    Table(db, "enroll_tokens").create(
        {
            "token_id": str, "token_hash": str, "device_class": str, "device_id": str, "created_at": str,
            "created_by": str, "expires_at": str, "used_at": str, "used_by": str,
        },
        pk="token_id", if_not_exists=True,
    )  # fmt: skip
    Table(db, "enroll_tokens").create_index(["token_hash"], unique=True, if_not_exists=True)
    Table(db, "identities").create(
        {
            "device_id": str, "device_class": str, "enrolled_at": str, "token_id": str,
            "broker_password_hash": str, "revoked_at": str,
        },
        pk="device_id", if_not_exists=True,
    )  # fmt: skip
    Table(db, "rollouts").create(
        {
            "id": str, "model": str, "version": str, "status": str, "spec": str, "wave": int,
            "waves": str, "wave_started_at": float, "soak_started_at": float, "reason": str,
            "created_at": str, "updated_at": str,
        },
        pk="id", if_not_exists=True,
    )  # fmt: skip
    Table(db, "rollout_devices").create(
        {
            "rollout_id": str, "device_id": str, "wave": int, "from_digest": str, "to_digest": str,
            "state": str, "assigned_at": float, "detail": str,
        },
        pk=("rollout_id", "device_id"), if_not_exists=True,
    )  # fmt: skip
    Table(db, "events").create(
        {"id": int, "at": str, "kind": str, "rollout_id": str, "device_id": str, "detail": str},
        pk="id", if_not_exists=True,
    )  # fmt: skip


def schema_11(db: sqlite_utils.Database) -> None:
    """Why the coordinator refused a device's last report (e.g. a class other than its enrolled one), and when."""
    add_columns(db, "devices", {"problem": str, "problem_at": str})


def schema_12(db: sqlite_utils.Database) -> None:
    """Whether a desired state lets the device go below its active bundle's min_version (an explicit rollback)."""
    add_columns(db, "desired", {"allow_downgrade": int})


def schema_13(db: sqlite_utils.Database) -> None:
    """Acknowledged and silenced alerts (the alerts themselves are computed on request, never stored). A key
    column without a value holds "" (a fleet-level alert's device, an alert without a rollout), and a silence of
    every device "*": PostgreSQL keys take no NULL."""
    Table(db, "alert_acks").create(
        {
            "kind": str, "device_id": str, "rollout_id": str, "since": str, "acked_by": str, "acked_at": str,
            "note": str,
        },
        pk=("kind", "device_id", "rollout_id"), if_not_exists=True,
    )  # fmt: skip
    Table(db, "alert_silences").create(
        {"kind": str, "device_id": str, "until": str, "silenced_by": str, "silenced_at": str, "note": str},
        pk=("kind", "device_id"), if_not_exists=True,
    )  # fmt: skip


MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = [
    schema_1, schema_2, schema_3, schema_4, schema_5, schema_6, schema_7, schema_8, schema_9, schema_10, schema_11,
    schema_12, schema_13,
]  # fmt: skip
SCHEMA_VERSION = len(MIGRATIONS)


def migrate(db: sqlite_utils.Database) -> None:
    """Apply, in order, every migration newer than the file's ``user_version``."""
    current = db.execute("pragma user_version").fetchone()[0]
    if current > SCHEMA_VERSION:
        raise StoreTooNew(f"fleet database schema {current} is newer than this coordinator ({SCHEMA_VERSION})")
    for version, migration in enumerate(MIGRATIONS, start=1):
        if version > current:
            migration(db)
            db.execute(f"pragma user_version = {version}")


def add_columns(db: sqlite_utils.Database, table: str, columns: dict[str, type]) -> None:
    """Add the columns ``table`` lacks (a migration run again after an interruption finds some there)."""
    existing = Table(db, table).columns_dict
    for column, kind in columns.items():
        if column not in existing:
            Table(db, table).add_column(column, kind)
