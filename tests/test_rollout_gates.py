"""The rollout engine's telemetry gates on a real fleet store: error rate and p95 latency on the new
bundle halt the rollout and give every device its previous bundle back; healthy telemetry, or too
little of it, lets the wave pass."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edgefleet.coordinator.rollouts.engine import RolloutEngine
from edgefleet.coordinator.rollouts.spec import Gates, RolloutSpec
from edgefleet.coordinator.store.sqlite import SQLiteStore
from edgefleet.protocol.messages import Availability, BundleRef, ErrorInfo, FailureKind, ReportedState, Telemetry

OLD, NEW = "a" * 64, "b" * 64
DEVICES = ["gw-1", "gw-2", "gw-3"]


def _report(db: SQLiteStore, device_id: str, digest: str, version: str) -> None:
    db.record_reported(
        ReportedState(
            device_id=device_id, device_class="x86-gateway", agent_version="t", status="ready",
            started_at="2026-01-01T00:00:00Z", active=BundleRef(digest=digest, name="digits", version=version),
        )
    )  # fmt: skip


def _window(device_id: str, digest: str, *, served: int, errors: int = 0, p95_ms: float = 10.0) -> Telemetry:
    return Telemetry(
        device_id=device_id, window_s=10.0, bundle_digest=digest, inference_count=served - errors,
        error_count=errors, errors_by_kind={"runtime": errors} if errors else {}, latency_ms_p95=p95_ms,
    )  # fmt: skip


class Fleet:
    """A fleet store with three devices on ``OLD`` and a rollout engine whose deploys are recorded."""

    def __init__(self, path: Path) -> None:
        self.db = SQLiteStore(path)
        for digest, version in ((OLD, "1.0.0"), (NEW, "2.0.0")):
            self.db.add_bundle({"digest": digest, "name": "digits", "version": version, "device_class": "x86-gateway"})
        for device_id in DEVICES:
            _report(self.db, device_id, OLD, "1.0.0")
            self.db.record_availability(Availability(device_id=device_id, state="online"))
            # What the old bundle did before the rollout: the latency baseline.
            self.db.add_telemetry(_window(device_id, OLD, served=100, p95_ms=10.0))
        self.deploys: list[tuple[str, list[str]]] = []
        self.engine = RolloutEngine(self.db, lambda digest, ids, **_kw: self.deploys.append((digest, sorted(ids))))

    def roll_out(self, gates: Gates, new_windows: list[Telemetry]) -> dict[str, Any]:
        """Roll ``NEW`` out in one wave; the devices activate it and send ``new_windows``; then the gates."""
        rollout = self.engine.create(
            RolloutSpec(model="digits", version="2.0.0", waves=["100%"], soak_s=0, gates=gates)
        )
        assert self.deploys == [(NEW, DEVICES)]
        for device_id in DEVICES:
            _report(self.db, device_id, NEW, "2.0.0")
        self.engine.tick()  # the devices are seen active; the soak starts
        self.db.add_telemetry_batch(new_windows)
        self.engine.tick()  # the soak is over: the gates
        return self.engine.get(rollout["id"])


@pytest.fixture
def fleet(tmp_path: Path) -> Fleet:
    return Fleet(tmp_path / "fleet.db")


def test_an_error_rate_over_the_gate_halts_and_rolls_every_device_back(fleet: Fleet) -> None:
    windows = [_window(d, NEW, served=100, errors=errors) for d, errors in zip(DEVICES, (2, 12, 4), strict=True)]

    done = fleet.roll_out(Gates(max_error_rate=0.05), windows)

    assert done["status"] == "halted", done
    assert done["reason"] == "error rate 0.060 on the new bundle exceeds 0.05"  # 18 of 300 served
    assert fleet.deploys[-1] == (OLD, DEVICES)
    assert {d["state"] for d in done["device_states"]} == {"rolled_back"}


def test_a_p95_latency_regression_over_the_gate_halts_the_rollout(fleet: Fleet) -> None:
    windows = [_window(d, NEW, served=100, p95_ms=p95) for d, p95 in zip(DEVICES, (24.0, 31.0, 35.0), strict=True)]

    done = fleet.roll_out(Gates(max_p95_latency_ratio=2.0), windows)

    assert done["status"] == "halted", done
    assert done["reason"] == "p95 latency 31.00 ms is 3.10x the previous 10.00 ms (limit 2.0x)"  # medians
    assert fleet.deploys[-1] == (OLD, DEVICES)


def test_a_wave_within_its_gates_passes_and_its_event_says_what_was_measured(fleet: Fleet) -> None:
    windows = [_window(d, NEW, served=100, errors=1, p95_ms=15.0) for d in DEVICES]

    done = fleet.roll_out(Gates(max_error_rate=0.05, max_p95_latency_ratio=2.0, min_inferences=20), windows)

    assert done["status"] == "completed" and done["reason"] == "every wave passed its gates", done
    assert fleet.deploys == [(NEW, DEVICES)], "nothing rolled back"
    [passed] = [e["detail"] for e in fleet.engine.events(done["id"]) if e["kind"] == "wave_passed"]
    assert "error rate 0.010 (limit 0.05) over 300 requests" in passed
    assert "p95 15.00 ms vs 10.00 ms = 1.50x (limit 2.0x)" in passed and "3 of 3 devices reported" in passed


def test_too_little_traffic_is_not_evaluated_never_passed(fleet: Fleet) -> None:
    windows = [_window("gw-1", NEW, served=10, errors=5, p95_ms=90.0)]

    done = fleet.roll_out(Gates(max_error_rate=0.05, min_inferences=20), windows)

    # The default policy continues, and says the gates had nothing to judge.
    assert done["status"] == "completed", done
    assert done["reason"] == "gates not evaluated in 1 wave(s), no evidence to judge"
    kinds = [e["kind"] for e in fleet.engine.events(done["id"])]
    assert "wave_not_evaluated" in kinds and "wave_passed" not in kinds
    [why] = [e["detail"] for e in fleet.engine.events(done["id"]) if e["kind"] == "wave_not_evaluated"]
    assert "1 of 3 devices on the new bundle reported, 10 requests served" in why
    assert fleet.deploys == [(NEW, DEVICES)]


def test_a_spec_can_halt_a_wave_that_has_no_evidence(fleet: Fleet) -> None:
    gates = Gates(min_reporting_devices=2, without_evidence="halt")

    done = fleet.roll_out(gates, [_window("gw-1", NEW, served=500)])  # one device reported, two are needed

    assert done["status"] == "halted", done
    assert "gates not evaluated" in done["reason"] and "1 of 3 devices on the new bundle reported" in done["reason"]
    assert fleet.deploys[-1] == (OLD, DEVICES)


def test_a_wave_waits_for_evidence_up_to_its_deadline(fleet: Fleet) -> None:
    gates = Gates(evidence_wait_s=3600, without_evidence="halt")

    waiting = fleet.roll_out(gates, [])  # no traffic yet, and an hour to wait for it

    assert waiting["status"] == "running" and fleet.deploys == [(NEW, DEVICES)]
    fleet.db.add_telemetry_batch([_window(d, NEW, served=100) for d in DEVICES])
    fleet.engine.tick()
    assert fleet.engine.get(waiting["id"])["status"] == "completed"


def _report_failure(db: SQLiteStore, device_id: str, kind: FailureKind | None, reason: str) -> None:
    db.record_reported(
        ReportedState(
            device_id=device_id, device_class="x86-gateway", agent_version="t", status="ready",
            started_at="2026-01-01T00:00:00Z", active=BundleRef(digest=OLD, name="digits", version="1.0.0"),
            last_error=ErrorInfo(reason=reason, kind=kind, bundle_digest=NEW),
        )
    )  # fmt: skip


def test_a_failed_activation_is_read_from_its_kind_not_from_the_wording_of_its_reason(tmp_path: Path) -> None:
    # Prepare: a rollout of NEW to three devices; one refuses it (kind, no prefix in the text), one
    # reports a download pause whose text starts like a refusal, one says nothing yet.
    fleet = Fleet(tmp_path / "fleet.db")
    rollout = fleet.engine.create(RolloutSpec(model="digits", version="2.0.0", waves=["100%"], soak_s=0))
    _report_failure(fleet.db, "gw-1", FailureKind.REFUSED, "test vector 1 differs")
    _report_failure(fleet.db, "gw-2", FailureKind.DOWNLOAD, "refused: the mirror answered 403")
    # Execute
    fleet.engine.tick()
    # Assert
    after = fleet.engine.get(rollout["id"])
    assert after["status"] == "halted"
    assert "1 of 3 devices failed to activate (gw-1: test vector 1 differs)" in after["reason"], after["reason"]
