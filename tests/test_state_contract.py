"""One contract for the coordinator's state store, run against each backend it has: a SQLite file
(WAL, what `coordinator serve` uses) and an in-memory SQLite database (tests, tools)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from edgefleet.coordinator.campaigns.store import CampaignStore
from edgefleet.coordinator.store.sqlite import FleetDB
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


class StateContract:
    """What every FleetDB backend must do; subclasses say how to open one."""

    def open(self, tmp_path: Path) -> FleetDB:
        raise NotImplementedError

    @pytest.fixture
    def db(self, tmp_path: Path) -> FleetDB:
        return self.open(tmp_path)

    def test_bundles_round_trip_and_list_newest_first(self, db: FleetDB) -> None:
        for n, digest in enumerate(("a" * 64, "b" * 64)):
            db.add_bundle({"digest": digest, "name": "m", "version": f"{n}", "device_class": "rpi4", "manifest": "{}"})
        assert db.bundle("a" * 64)["version"] == "0"  # type: ignore[index]
        assert db.bundle("c" * 64) is None
        assert [b["digest"] for b in db.bundles()] == ["b" * 64, "a" * 64]

    def test_reported_state_and_availability_make_one_device(self, db: FleetDB) -> None:
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

    def test_tags_and_groups_filter_devices(self, db: FleetDB) -> None:
        for device in ("a", "b", "c"):
            db.record_reported(_state(device))
        db.label_device("a", tags=["canary", "eu"], group="line-1")
        db.label_device("b", tags=["eu"], group=None)
        assert [d["device_id"] for d in db.devices(tag="eu")] == ["a", "b"]
        assert [d["device_id"] for d in db.devices(group="line-1")] == ["a"]
        with pytest.raises(KeyError):
            db.label_device("zz", tags=[], group=None)

    def test_desired_revisions_only_grow_also_under_concurrent_writers(self, db: FleetDB) -> None:
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

    def test_telemetry_is_stored_once_per_message_id(self, db: FleetDB) -> None:
        message = Telemetry(device_id="d1", window_s=1.0, inference_count=3, error_count=0)
        assert db.add_telemetry(message) is True
        assert db.add_telemetry(message) is False
        assert db.add_telemetry_batch([message, Telemetry(device_id="d1", window_s=1.0, inference_count=1,
                                                          error_count=0)]) == 1  # fmt: skip
        assert len(db.telemetry("d1")) == 2

    def test_command_results_attach_only_to_commands_sent(self, db: FleetDB) -> None:
        command = Command(device_id="d1", name="ping")
        db.record_command_sent(command)
        assert db.record_command_result(CommandResult(device_id="d1", command_id=command.message_id, ok=True))
        assert not db.record_command_result(CommandResult(device_id="d2", command_id=command.message_id, ok=True))
        (row,) = db.commands("d1")
        assert row["ok"] is True and row["completed_at"] is not None

    def test_campaign_progress_keeps_the_largest_epsilon(self, db: FleetDB) -> None:
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


class TestFileState(StateContract):
    def open(self, tmp_path: Path) -> FleetDB:
        return FleetDB(tmp_path / "fleet.db")

    def test_everything_survives_reopening(self, tmp_path: Path) -> None:
        db = self.open(tmp_path)
        db.record_reported(_state("d1"))
        db.set_desired("d1", DIGEST)
        again = self.open(tmp_path)
        assert again.device("d1")["desired"]["revision"] == 1  # type: ignore[index]


class TestMemoryState(StateContract):
    def open(self, tmp_path: Path) -> FleetDB:
        return FleetDB(":memory:")
