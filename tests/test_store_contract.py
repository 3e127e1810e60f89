"""One contract for the coordinator's fleet store (edgefleet.coordinator.store.FleetStore) and its
repositories, run against each backend it has: a SQLite file (WAL, what `coordinator serve` uses) and
an in-memory SQLite database (tests, tools). A new backend subclasses ``StoreContract``."""

from __future__ import annotations

import shutil
import sqlite3
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from edgefleet.coordinator.campaigns.store import CampaignStore
from edgefleet.coordinator.store import FleetStore
from edgefleet.coordinator.store.migrations import SCHEMA_VERSION
from edgefleet.coordinator.store.sqlite import SQLiteStore
from edgefleet.protocol.messages import (
    Availability,
    BundleRef,
    Command,
    CommandResult,
    ErrorInfo,
    ReportedState,
    Telemetry,
)

DIGEST = "ab" * 32


def _state(device: str, status: str = "ready", **extra: object) -> ReportedState:
    return ReportedState(device_id=device, device_class="rpi4", agent_version="1", status=status,  # type: ignore[arg-type]
                         started_at=datetime.now(UTC), **extra)  # type: ignore[arg-type]  # fmt: skip


class StoreContract:
    """What every FleetStore backend must do; subclasses say how to open one."""

    def open(self, tmp_path: Path) -> FleetStore:
        raise NotImplementedError

    @pytest.fixture
    def db(self, tmp_path: Path) -> FleetStore:
        return self.open(tmp_path)

    def test_bundles_round_trip_and_list_newest_first(self, db: FleetStore) -> None:
        for n, digest in enumerate(("a" * 64, "b" * 64)):
            db.add_bundle({"digest": digest, "name": "m", "version": f"{n}", "device_class": "rpi4", "manifest": "{}"})
        assert db.bundle("a" * 64)["version"] == "0"  # type: ignore[index]
        assert db.bundle("c" * 64) is None
        assert [b["digest"] for b in db.bundles()] == ["b" * 64, "a" * 64]

    def test_reported_state_and_availability_make_one_device(self, db: FleetStore) -> None:
        ref = BundleRef(digest=DIGEST, name="m", version="1")
        db.record_reported(_state("d1", active=ref, last_error=ErrorInfo(reason="self-test failed")))
        db.record_availability(Availability(device_id="d1", state="online"))
        device = db.device("d1")
        assert device is not None
        assert (device["status"], device["availability"], device["active_version"]) == ("ready", "online", "1")
        assert device["last_error"] == "self-test failed" and device["reported"]["active"]["digest"] == DIGEST
        db.record_availability(Availability(device_id="d1", state="offline"))
        assert db.devices(availability="offline")[0]["device_id"] == "d1"
        assert db.device("nobody") is None

    def test_tags_and_groups_filter_devices(self, db: FleetStore) -> None:
        for device in ("a", "b", "c"):
            db.record_reported(_state(device))
        db.label_device("a", tags=["canary", "eu"], group="line-1")
        db.label_device("b", tags=["eu"], group=None)
        assert [d["device_id"] for d in db.devices(tag="eu")] == ["a", "b"]
        assert [d["device_id"] for d in db.devices(group="line-1")] == ["a"]
        with pytest.raises(KeyError):
            db.label_device("zz", tags=[], group=None)

    def test_desired_revisions_only_grow_also_under_concurrent_writers(self, db: FleetStore) -> None:
        revisions: list[int] = []
        lock = threading.Lock()

        def deploy() -> None:
            for _ in range(20):
                revision = db.set_desired("d1", DIGEST)
                with lock:
                    revisions.append(revision)

        threads = [threading.Thread(target=deploy) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(revisions) == list(range(1, 81))  # each revision handed out exactly once

    def test_a_desired_state_keeps_whether_it_allows_a_downgrade(self, db: FleetStore) -> None:
        db.set_desired("d1", DIGEST, allow_downgrade=True)
        db.set_desired("d2", DIGEST)
        rows = {row["device_id"]: row for row in db.desired_states()}
        assert (bool(rows["d1"]["allow_downgrade"]), bool(rows["d2"]["allow_downgrade"])) == (True, False)
        db.set_desired("d1", DIGEST)  # the next deployment says again what it allows
        assert not next(r for r in db.desired_states() if r["device_id"] == "d1")["allow_downgrade"]

    def test_telemetry_is_stored_once_per_message_id(self, db: FleetStore) -> None:
        message = Telemetry(device_id="d1", window_s=1.0, inference_count=3, error_count=0)
        assert db.add_telemetry(message) is True
        assert db.add_telemetry(message) is False
        assert db.add_telemetry_batch([message, Telemetry(device_id="d1", window_s=1.0, inference_count=1,
                                                          error_count=0)]) == 1  # fmt: skip
        assert len(db.telemetry("d1")) == 2

    def test_command_results_attach_only_to_commands_sent(self, db: FleetStore) -> None:
        command = Command(device_id="d1", name="ping")
        db.record_command_sent(command)
        assert db.record_command_result(CommandResult(device_id="d1", command_id=command.message_id, ok=True))
        assert not db.record_command_result(CommandResult(device_id="d2", command_id=command.message_id, ok=True))
        (row,) = db.commands("d1")
        assert row["ok"] is True and row["completed_at"] is not None

    def test_campaign_progress_keeps_the_largest_epsilon(self, db: FleetStore) -> None:
        store = CampaignStore(db)
        store.create({"id": "c1", "model": "m", "base_version": "1", "spec": {"rounds": 2}, "abort_requested": 0})
        store.record_round("c1", {"round": 1, "status": "ok", "participants": [{"device": "a", "epsilon": 2.0}],
                                  "evaluation": {"accuracy": 0.5}})  # fmt: skip
        store.record_round("c1", {"round": 2, "status": "ok", "participants": [{"device": "b", "epsilon": 1.0}]})
        row = store.get("c1")
        assert (row["round"], row["epsilon"], row["evaluation"]) == (2, 2.0, {"accuracy": 0.5})
        assert [r["round"] for r in store.rounds("c1")] == [1, 2]
        store.request_abort("c1")
        assert store.abort_requested("c1")

    def test_a_production_stage_is_held_by_one_version_and_the_history_remembers(self, db: FleetStore) -> None:
        db.stages.move("m", "1", "production", at="2026-01-01T00:00:00+00:00")
        db.stages.move("m", "2", "staging", at="2026-01-02T00:00:00+00:00")
        db.stages.move("m", "2", "production", at="2026-01-03T00:00:00+00:00")
        assert db.stages.stages("m") == {"1": "archived", "2": "production"}
        assert [(h["version"], h["stage"], h["previous"]) for h in db.stages.history("m")] == [
            ("1", "production", "staging"), ("2", "staging", "staging"), ("1", "archived", "production"),
            ("2", "production", "staging"),
        ]  # fmt: skip
        assert db.stages.earlier_production("m", "2") == ["1"]
        assert db.stages.stages("other") == {}

    def test_rollouts_their_devices_and_events(self, db: FleetStore) -> None:
        def rollout(rid: str, at: str, status: str) -> dict[str, object]:
            return {"id": rid, "model": "m", "version": "2", "status": status, "spec": "{}", "wave": 0,
                    "waves": "[1]", "created_at": at, "updated_at": at}  # fmt: skip

        member = {"rollout_id": "r1", "device_id": "d1", "wave": 0, "from_digest": None, "to_digest": DIGEST,
                  "state": "pending"}  # fmt: skip
        db.rollouts.create(rollout("r1", "2026-01-01", "running"), [member, member | {"device_id": "d2", "wave": 1}])
        db.rollouts.create(rollout("r2", "2026-01-02", "halted"), [])
        db.rollouts.update("r1", {"wave": 1})
        db.rollouts.update_member("r1", "d1", {"state": "active"})
        for n in range(3):
            db.rollouts.add_event({"at": f"t{n}", "kind": "k", "rollout_id": "r1", "device_id": None, "detail": ""})
        assert db.rollouts.ids() == ["r2", "r1"] and db.rollouts.ids(status="running") == ["r1"]
        assert db.rollouts.get("r1")["wave"] == 1 and db.rollouts.get("nope") is None  # type: ignore[index]
        assert [(m["device_id"], m["state"]) for m in db.rollouts.members("r1")] == [
            ("d1", "active"),
            ("d2", "pending"),
        ]
        assert [e["at"] for e in db.rollouts.events("r1", 2)] == ["t2", "t1"] and db.rollouts.events("r2", 5) == []
        assert db.rollouts.count_by_status() == {"running": 1, "halted": 1}

    def test_api_tokens_are_found_by_hash_and_revoked_once(self, db: FleetStore) -> None:
        row = {"token_id": "t1", "token_hash": "h1", "name": "ci", "role": "operator", "created_at": "2026-01-01",
               "created_by": "admin", "expires_at": None, "revoked_at": None}  # fmt: skip
        db.tokens.add(row)
        assert db.tokens.by_hash("h1")["token_id"] == "t1" and db.tokens.by_hash("h2") is None  # type: ignore[index]
        assert db.tokens.revoke("t1", at="first")["revoked_at"] == "first"  # type: ignore[index]
        assert db.tokens.revoke("t1", at="second")["revoked_at"] == "first"  # type: ignore[index]
        assert db.tokens.revoke("nope", at="x") is None
        assert [t["token_id"] for t in db.tokens.all()] == ["t1"]

    def test_an_enrollment_token_is_spent_on_an_identity_and_can_be_given_back(self, db: FleetStore) -> None:
        db.enrollment.add_token({"token_id": "e1", "token_hash": "h", "device_class": "rpi4", "device_id": None,
                                 "created_at": "c", "created_by": "admin", "expires_at": "x", "used_at": None,
                                 "used_by": None})  # fmt: skip
        identity = {"device_id": "d1", "device_class": "rpi4", "enrolled_at": "now", "token_id": "e1",
                    "broker_password_hash": "pw", "revoked_at": None}  # fmt: skip
        db.enrollment.spend("e1", identity, at="now")
        assert db.enrollment.token_by_hash("h")["used_by"] == "d1"  # type: ignore[index]
        assert db.enrollment.broker_credentials() == {"d1": "pw"}
        db.enrollment.unspend("e1", "d1", None)
        assert db.enrollment.token_by_hash("h")["used_at"] is None and db.enrollment.identity("d1") is None  # type: ignore[index]
        db.enrollment.spend("e1", identity, at="now")
        db.enrollment.put_identity({"device_id": "d1", "broker_password_hash": None, "revoked_at": "later"})
        assert db.enrollment.identity("d1")["device_class"] == "rpi4"  # type: ignore[index]  # the rest kept
        assert db.enrollment.broker_credentials() == {}
        assert [i["device_id"] for i in db.enrollment.identities()] == ["d1"]

    def test_health_reads_are_bounded_and_filtered(self, db: FleetStore) -> None:
        for device in ("d1", "d2"):
            db.record_reported(_state(device))
        old, new = "a" * 64, "b" * 64
        for n in range(6):
            window = Telemetry(device_id="d1", window_s=1.0, bundle_digest=old if n < 3 else new, inference_count=10,
                               error_count=n, latency_ms_p95=float(n), drift_alert=n == 5)  # fmt: skip
            db.add_telemetry(window)
        latest = db.health.latest_windows()
        assert set(latest) == {"d1"} and latest["d1"]["error_count"] == 5
        totals = db.health.window_totals("")
        assert totals["d1"]["errors"] == 15 and totals["d1"]["served"] == 75
        rows = db.health.recent_windows("d1", ["latency_ms_p95"], limit=2, bundle_digest=old)
        assert [r["latency_ms_p95"] for r in rows] == [2.0, 1.0]
        assert len(db.health.recent_windows("d1", ["drift_alert"], limit=10, only_true="drift_alert")) == 1
        with pytest.raises(ValueError):
            db.health.recent_windows("d1", ["rowid; drop table telemetry"], limit=1)

    def test_an_acknowledgment_is_kept_by_key_and_dropped_only_as_it_was_read(self, db: FleetStore) -> None:
        def ack(kind: str, device: str, at: str, rollout: str = "") -> dict[str, object]:
            return {"kind": kind, "device_id": device, "rollout_id": rollout, "since": "s", "acked_by": "ops",
                    "acked_at": at, "note": None}  # fmt: skip

        assert db.alert_state.acknowledge(ack("offline", "d1", "t1"))["acked_by"] == "ops"
        db.alert_state.acknowledge(ack("rollout_halted", "", "t1", rollout="r1"))
        db.alert_state.acknowledge(ack("offline", "d1", "t2") | {"note": "on it"})  # replaces the first
        rows = db.alert_state.acknowledgments()
        assert [(r["kind"], r["device_id"], r["rollout_id"], r["note"]) for r in rows] == [
            ("offline", "d1", "", "on it"), ("rollout_halted", "", "r1", None),
        ]  # fmt: skip
        assert db.alert_state.drop_acknowledgments([ack("offline", "d1", "t1")]) == 0  # made again since: kept
        assert db.alert_state.drop_acknowledgments([rows[0], rows[1]]) == 2
        assert db.alert_state.acknowledgments() == []

    def test_a_silence_holds_until_its_time_and_is_lifted_by_key(self, db: FleetStore) -> None:
        def silence(kind: str, device: str, until: str) -> dict[str, object]:
            return {"kind": kind, "device_id": device, "until": until, "silenced_by": "ops", "silenced_at": "t0",
                    "note": None}  # fmt: skip

        start = "2026-01-01T00"
        db.alert_state.silence(silence("drift", "*", "2026-01-01T02:00:00.000000+00:00"), now=start)
        db.alert_state.silence(silence("offline", "d1", "2026-01-01T01:00:00.000000+00:00"), now=start)
        again = db.alert_state.silence(silence("offline", "d1", "2026-01-01T03:00:00.000000+00:00"), now=start)
        assert again["until"] == "2026-01-01T03:00:00.000000+00:00"
        assert [(r["kind"], r["device_id"]) for r in db.alert_state.silences(now="2026-01-01T01:30:00")] == [
            ("drift", "*"), ("offline", "d1"),
        ]  # fmt: skip
        assert [r["kind"] for r in db.alert_state.silences(now="2026-01-01T02:30:00")] == ["offline"]
        assert db.alert_state.unsilence("offline", "d1") is True and db.alert_state.unsilence("offline", "d1") is False
        assert db.alert_state.silences(now="2026-01-01T00:00:00") == [
            silence("drift", "*", "2026-01-01T02:00:00.000000+00:00")
        ]
        # an expired silence is gone once another is set
        db.alert_state.silence(silence("disk_full", "d2", "2026-01-02T00:00:00.000000+00:00"), now="2026-01-01T05")
        assert [r["kind"] for r in db.alert_state.silences(now="")] == ["disk_full"]


class TestFileStore(StoreContract):
    def open(self, tmp_path: Path) -> FleetStore:
        return SQLiteStore(tmp_path / "fleet.db")

    def test_everything_survives_reopening(self, tmp_path: Path) -> None:
        db = self.open(tmp_path)
        db.record_reported(_state("d1"))
        db.set_desired("d1", DIGEST)
        again = self.open(tmp_path)
        assert again.device("d1")["desired"]["revision"] == 1  # type: ignore[index]


class TestMemoryStore(StoreContract):
    def open(self, tmp_path: Path) -> FleetStore:
        return SQLiteStore(":memory:")


ASSETS = Path(__file__).resolve().parent / "assets"


def test_a_store_written_by_the_schema_9_coordinator_migrates_in_place(tmp_path: Path) -> None:
    """tests/assets/fleet-schema9.db was written by the coordinator before every table came from a
    migration (schema 9: its services made api_tokens, enroll_tokens, identities, rollouts,
    rollout_devices and events themselves when they started)."""
    # Prepare
    path = tmp_path / "fleet.db"
    shutil.copyfile(ASSETS / "fleet-schema9.db", path)
    assert sqlite3.connect(path).execute("pragma user_version").fetchone()[0] == 9
    # Execute
    db = SQLiteStore(path)
    # Assert: the schema is current and every row written before is read through the interface
    assert sqlite3.connect(path).execute("pragma user_version").fetchone()[0] == SCHEMA_VERSION == 13
    assert {d["device_id"] for d in db.devices()} == {"gw-1", "gw-2"} and db.device("gw-1")["tags"] == ["lab"]  # type: ignore[index]
    assert len(db.bundles()) == 2 and db.stages.stages("digits") == {"1.0.0": "production"}
    assert [t["role"] for t in db.tokens.all()] == ["operator"]
    assert [t["device_id"] for t in db.enrollment.tokens()] == ["gw-9"]
    [rollout_id] = db.rollouts.ids()
    assert {m["device_id"] for m in db.rollouts.members(rollout_id)} == {"gw-1", "gw-2"}
    assert db.rollouts.events(rollout_id, 10)
    assert db.campaigns.get("c1")["spec"] == {"model": "digits"} and db.campaigns.rounds("c1")[0]["round"] == 1  # type: ignore[index]
    assert len(db.telemetry("gw-1")) == 1 and db.telemetry_rollups("gw-1", "minute")
    # and it goes on working: a new token, a new rollout row, reopened
    db.tokens.add({"token_id": "t2", "token_hash": "h2", "name": "n", "role": "read", "created_at": "z",
                   "created_by": "admin", "expires_at": None, "revoked_at": None})  # fmt: skip
    assert len(SQLiteStore(path).tokens.all()) == 2


def test_a_fresh_store_makes_every_table_by_migration(tmp_path: Path) -> None:
    """Nothing outside the migrations creates a table: a fresh file has them all before any service runs."""
    SQLiteStore(tmp_path / "fleet.db")
    tables = {
        r[0]
        for r in sqlite3.connect(tmp_path / "fleet.db").execute("select name from sqlite_master where type = 'table'")
    }
    old = {
        r[0]
        for r in sqlite3.connect(ASSETS / "fleet-schema9.db").execute(
            "select name from sqlite_master where type = 'table'"
        )
    }
    assert old <= tables, sorted(old - tables)


class TestPostgresStore(StoreContract):
    @pytest.fixture
    def db(self, postgres_url: str) -> Iterator[FleetStore]:
        from edgefleet.coordinator.store.postgres import PostgresStore

        store = PostgresStore(postgres_url)
        yield store
        store.close()

    def test_the_schema_is_sqlites_table_for_table_and_column_for_column(self, postgres_url: str) -> None:
        import psycopg

        from edgefleet.coordinator.store.postgres import PostgresStore

        PostgresStore(postgres_url).close()
        with SQLiteStore(":memory:").locked() as lite:
            expected = {t.name: {c.name: c.type.upper() for c in t.columns} for t in lite.tables}
        with psycopg.connect(postgres_url) as conn:
            rows = conn.execute(
                "select c.table_name, c.column_name, c.data_type from information_schema.columns c"
                " join pg_class k on k.relname = c.table_name where c.table_schema = 'public'"
                " and not k.relispartition"
            ).fetchall()
            version = conn.execute("select version from edgefleet_schema").fetchone()
        kinds = {"text": "TEXT", "bigint": "INTEGER", "double precision": "FLOAT"}
        actual: dict[str, dict[str, str]] = {}
        for table, column, kind in rows:
            actual.setdefault(table, {})[column] = kinds[kind]
        assert version == (SCHEMA_VERSION,)
        own = {"edgefleet_schema", "telemetry_ids"}  # PostgreSQL's own bookkeeping (postgres_schema.py)
        assert set(actual) - own == set(expected)
        for table, columns in expected.items():
            assert actual[table] == {c: "FLOAT" if k == "REAL" else k for c, k in columns.items()}, table

    def test_two_coordinators_on_one_database_hand_out_each_revision_once_and_store_each_report_once(
        self, postgres_url: str
    ) -> None:
        from edgefleet.coordinator.store.postgres import PostgresStore

        stores = [PostgresStore(postgres_url), PostgresStore(postgres_url)]  # as two replicas would
        revisions: list[int] = []
        reports = [Telemetry(device_id=f"d{n % 5}", window_s=1.0, inference_count=1, error_count=0)
                   for n in range(200)]  # fmt: skip
        stored: list[int] = []
        lock = threading.Lock()

        def work(store: FleetStore) -> None:
            for n in range(0, 200, 20):
                new = store.add_telemetry_batch(reports[n : n + 20])  # both replicas get every report
                revision = store.set_desired("d1", DIGEST)
                with lock:
                    stored.append(new)
                    revisions.append(revision)

        threads = [threading.Thread(target=work, args=(store,)) for store in stores for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(revisions) == list(range(1, 41))
        assert sum(stored) == 200  # each report stored by exactly one of the four writers
        assert sum(len(stores[0].telemetry(f"d{n}", limit=1000)) for n in range(5)) == 200
        [minute] = stores[1].fleet_rollups("minute")
        assert (minute["reports"], minute["devices"]) == (200, 5)
        for store in stores:
            store.close()

    def test_retention_drops_whole_days_of_raw_telemetry_and_deletes_in_the_day_at_the_cutoff(
        self, db: FleetStore
    ) -> None:
        import psycopg

        from edgefleet.coordinator.telemetry.rows import prepare

        now = datetime(2026, 6, 10, 12, 0, tzinfo=UTC)
        arrivals = [now - timedelta(days=d, hours=h) for d, h in ((9, 0), (8, 1), (8, 0), (7, 1), (7, -1), (0, 0))]
        db.add_reports([prepare(Telemetry(device_id="d1", window_s=1.0, inference_count=1, error_count=0, sent_at=at),
                                at) for at in arrivals])  # fmt: skip

        def partitions() -> list[str]:
            with psycopg.connect(db.url) as conn:  # type: ignore[attr-defined]
                rows = conn.execute(
                    "select c.relname from pg_inherits i join pg_class c on c.oid = i.inhrelid"
                    " where i.inhparent = 'telemetry'::regclass order by 1"
                ).fetchall()
            return [name for (name,) in rows]

        assert partitions() == ["telemetry_default", "telemetry_p20260601", "telemetry_p20260602",
                                "telemetry_p20260603", "telemetry_p20260610"]  # fmt: skip
        deleted = db.prune_telemetry(now=now, raw_days=7, minute_days=365, hour_days=365)
        assert deleted["telemetry"] == 4  # two whole days dropped (1 + 2 rows), one row deleted on June 3
        assert partitions() == ["telemetry_default", "telemetry_p20260603", "telemetry_p20260610"]
        assert [r["received_at"] for r in db.telemetry("d1")] == [arrivals[5].isoformat(), arrivals[4].isoformat()]
        # a report of a dropped day delivered again is new again, as it would be in SQLite after pruning
        assert db.add_reports([prepare(Telemetry(device_id="d1", window_s=1.0, inference_count=1, error_count=0),
                                       now)]) == 1  # fmt: skip

    def test_a_database_of_a_newer_coordinator_is_refused(self, postgres_url: str) -> None:
        import psycopg

        from edgefleet.coordinator.store.migrations import StoreTooNew
        from edgefleet.coordinator.store.postgres import PostgresStore

        PostgresStore(postgres_url).close()
        PostgresStore(postgres_url).close()  # at the current version: nothing to do
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute("update edgefleet_schema set version = version + 1")
        with pytest.raises(StoreTooNew, match="newer than this coordinator"):
            PostgresStore(postgres_url)


def test_a_store_server_that_does_not_answer_is_unavailable_and_its_password_stays_out(tmp_path: Path) -> None:
    from edgefleet.coordinator.errors import StoreUnavailable
    from edgefleet.coordinator.store import open_store

    with pytest.raises(StoreUnavailable) as caught:
        open_store("postgresql://fleet:hunter2@127.0.0.1:1/fleet", connect_timeout_s=2)  # port 1: nothing listens
    assert "hunter2" not in caught.value.reason and "fleet:***@127.0.0.1:1" in caught.value.reason
