"""Fleet alerts computed from a real SQLite fleet store, and served by the REST API."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from edgefleet.coordinator.health.alerts import AlertThresholds, compute_alerts
from edgefleet.coordinator.store.sqlite import SQLiteStore
from edgefleet.protocol.messages import Availability, BundleRef, ReportedState, Telemetry

V1 = BundleRef(digest="1" * 64, name="digits", version="1.0.0")
V2 = BundleRef(digest="2" * 64, name="digits", version="2.0.0")


@pytest.fixture
def db(tmp_path: Path) -> SQLiteStore:
    return SQLiteStore(tmp_path / "fleet.db")


def _device(db: SQLiteStore, device_id: str, *, active: BundleRef = V1, previous: BundleRef | None = None) -> None:
    db.record_availability(Availability(device_id=device_id, state="online"))
    db.record_reported(
        ReportedState(
            device_id=device_id,
            device_class="x86-gateway",
            agent_version="0.1.0",
            status="ready",
            active=active,
            previous=previous,
            started_at=datetime.now(UTC),
        )
    )


def _telemetry(db: SQLiteStore, device_id: str, *, bundle: BundleRef = V1, **fields: object) -> None:
    values: dict[str, object] = {"inference_count": 50, "error_count": 0, "latency_ms_p95": 10.0} | fields
    assert db.add_telemetry(Telemetry(device_id=device_id, window_s=10.0, bundle_digest=bundle.digest, **values))


def _kinds(db: SQLiteStore, **kw: object) -> list[tuple[str, str, str]]:
    return [(a.kind, a.device_id, a.severity) for a in compute_alerts(db, **kw)]  # type: ignore[arg-type]


def test_a_healthy_fleet_has_no_alerts(db: SQLiteStore) -> None:
    _device(db, "gw-1")
    _telemetry(db, "gw-1", drift_score=0.02)

    assert compute_alerts(db) == []


def test_offline_by_last_will_and_by_staleness(db: SQLiteStore) -> None:
    _device(db, "gw-1")
    _device(db, "gw-2")
    _device(db, "gw-3")
    db.record_availability(Availability(device_id="gw-1", state="offline"))
    db.record_availability(Availability(device_id="gw-3", state="stopped"))

    assert _kinds(db) == [("offline", "gw-1", "critical"), ("offline", "gw-3", "warning")]
    # An hour on, gw-2 still says "online" but has been silent far past the staleness limit.
    later = datetime.now(UTC) + timedelta(hours=1)
    stale = [a for a in compute_alerts(db, AlertThresholds(offline_after_s=600), now=later) if a.device_id == "gw-2"]
    assert [(a.kind, a.severity) for a in stale] == [("offline", "critical")]
    assert "no message for 36" in stale[0].detail
    assert "gw-2" not in {a.device_id for a in compute_alerts(db, AlertThresholds(offline_after_s=7200), now=later)}


def test_drift_alert_starts_with_the_current_run_of_drifting_windows(db: SQLiteStore) -> None:
    _device(db, "gw-1")
    _telemetry(db, "gw-1", drift_score=0.05, drift_alert=False)
    _telemetry(db, "gw-1", drift_score=0.4, drift_alert=True, drift_features={"f3": 0.9, "f7": 0.5})
    _telemetry(db, "gw-1", drift_score=0.5, drift_alert=True)
    rows = db.telemetry("gw-1")

    [alert] = compute_alerts(db)

    assert (alert.kind, alert.severity) == ("drift", "warning")
    assert alert.since == rows[1]["received_at"], "the first drifting window of the run"
    assert alert.detail.startswith("drift score 0.500")
    _telemetry(db, "gw-1", drift_score=0.01, drift_alert=False)
    assert compute_alerts(db) == [], "the alert ends with the drift"


def test_error_rate_over_the_threshold_in_the_window(db: SQLiteStore) -> None:
    _device(db, "gw-1")
    _device(db, "gw-2")
    _telemetry(db, "gw-1", inference_count=90, error_count=0)
    _telemetry(db, "gw-1", inference_count=0, error_count=10)  # 10 of 100 requests failed
    _telemetry(db, "gw-2", inference_count=5, error_count=5)  # too few requests to judge

    [alert] = compute_alerts(db)

    assert (alert.kind, alert.device_id, alert.severity) == ("error_rate", "gw-1", "critical")
    assert "10 of 100" in alert.detail
    assert compute_alerts(db, AlertThresholds(max_error_rate=0.2)) == []
    assert _kinds(db, thresholds=AlertThresholds(min_requests=5)) == [
        ("error_rate", "gw-1", "critical"),
        ("error_rate", "gw-2", "critical"),
    ]
    # Outside the window the errors no longer count.
    assert (
        compute_alerts(db, now=datetime.now(UTC) + timedelta(hours=1), thresholds=AlertThresholds(offline_after_s=1e6))
        == []
    )


def test_latency_regression_compares_the_active_bundle_with_the_previous_one(db: SQLiteStore) -> None:
    _device(db, "gw-1", active=V2, previous=V1)
    _device(db, "gw-2", active=V2, previous=V1)
    _device(db, "gw-3", active=V2, previous=V1)
    for device_id, new_p95 in (("gw-1", 30.0), ("gw-2", 11.0)):
        _telemetry(db, device_id, bundle=V1, latency_ms_p95=10.0)
        _telemetry(db, device_id, bundle=V2, latency_ms_p95=new_p95)
    _telemetry(db, "gw-3", bundle=V2, latency_ms_p95=50.0)  # no telemetry of the previous bundle: no judgement

    [alert] = compute_alerts(db)

    assert (alert.kind, alert.device_id) == ("latency_regression", "gw-1")
    assert "3.00x" in alert.detail and "2.0.0" in alert.detail
    assert compute_alerts(db, AlertThresholds(max_p95_latency_ratio=4)) == []


def test_alerts_endpoint_needs_a_token_and_takes_thresholds(tmp_path: Path) -> None:
    from edgefleet.coordinator.api.app import create_app
    from edgefleet.coordinator.config import BrokerConfig, CoordinatorConfig
    from edgefleet.coordinator.service import Coordinator
    from edgefleet.protocol.signing import generate_keypair

    (tmp_path / "k.pub").write_bytes(generate_keypair()[1])
    config = CoordinatorConfig(data_dir=tmp_path / "c", trusted_keys=[tmp_path / "k.pub"], broker=BrokerConfig())
    coordinator = Coordinator(config)
    _device(coordinator.db, "gw-1")
    coordinator.db.record_availability(Availability(device_id="gw-1", state="offline"))
    http = TestClient(create_app(coordinator, token="alerts-token-0123456789"))  # no lifespan: no broker needed

    assert http.get("/api/v1/alerts").status_code == 401
    response = http.get("/api/v1/alerts", headers={"Authorization": "Bearer alerts-token-0123456789"})
    assert response.status_code == 200
    [alert] = response.json()
    assert alert.keys() == {"kind", "device_id", "severity", "since", "detail", "rollout_id", "acknowledged",
                            "silenced_until"}
    assert (alert["acknowledged"], alert["silenced_until"]) == (None, None)
    assert (alert["kind"], alert["device_id"], alert["severity"]) == ("offline", "gw-1", "critical")
    bad = http.get("/api/v1/alerts?max_error_rate=2", headers={"Authorization": "Bearer alerts-token-0123456789"})
    assert bad.status_code == 422


def test_configured_thresholds_apply_to_the_api_and_metrics_and_a_query_overrides_them(tmp_path: Path) -> None:
    from edgefleet.coordinator.api.app import create_app
    from edgefleet.coordinator.config import BrokerConfig, CoordinatorConfig
    from edgefleet.coordinator.service import Coordinator
    from edgefleet.protocol.signing import generate_keypair

    (tmp_path / "k.pub").write_bytes(generate_keypair()[1])
    config = CoordinatorConfig(
        data_dir=tmp_path / "c", trusted_keys=[tmp_path / "k.pub"], broker=BrokerConfig(),
        alerts=AlertThresholds(max_error_rate=0.2, min_requests=10),
    )  # fmt: skip
    coordinator = Coordinator(config)
    _device(coordinator.db, "gw-1")
    _telemetry(coordinator.db, "gw-1", inference_count=85, error_count=15)  # 15% failed
    headers = {"Authorization": "Bearer alerts-token-0123456789"}
    http = TestClient(create_app(coordinator, token="alerts-token-0123456789"), headers=headers)

    assert http.get("/api/v1/alerts").json() == [], "15% is within the configured 20%"
    assert 'edgefleet_fleet_alerts{kind="error_rate"} 0.0' in http.get("/metrics").text
    [alert] = http.get("/api/v1/alerts?max_error_rate=0.1").json()
    assert alert["kind"] == "error_rate" and "15 of 100" in alert["detail"]
    assert http.get("/api/v1/alerts?max_error_rate=0.1&min_requests=500").json() == [], "both given: both apply"
    with pytest.raises(ValidationError, match="max_error_rate"):
        CoordinatorConfig(data_dir=tmp_path / "c", trusted_keys=[tmp_path / "k.pub"], alerts={"max_error_rate": 3})


def test_a_failed_activation_and_a_halted_rollout_raise_alerts(db: SQLiteStore) -> None:
    from edgefleet.coordinator.rollouts.engine import RolloutEngine
    from edgefleet.coordinator.rollouts.spec import RolloutSpec
    from edgefleet.protocol.messages import ErrorInfo, FailureKind

    _device(db, "gw-1")
    db.record_reported(
        ReportedState(
            device_id="gw-1", device_class="x86-gateway", agent_version="0.1.0", status="ready", active=V1,
            started_at=datetime.now(UTC),
            last_error=ErrorInfo(reason="test vector 1 differs", kind=FailureKind.REFUSED, bundle_digest=V2.digest),
        )
    )  # fmt: skip
    db.add_bundle({"digest": V2.digest, "name": "digits", "version": "2.0.0", "device_class": "x86-gateway"})
    engine = RolloutEngine(db, lambda _digest, _ids, **_kw: None)
    rollout = engine.create(RolloutSpec(model="digits", version="2.0.0", soak_s=0))
    engine.tick()  # gw-1 is seen to have refused it: the rollout halts

    alerts = {a.kind: a for a in compute_alerts(db)}

    assert engine.get(rollout["id"])["status"] == "halted"
    failed = alerts["activation_failed"]
    assert (failed.device_id, failed.severity) == ("gw-1", "critical")
    assert failed.detail == f"activation refused (bundle {V2.digest[:12]}): test vector 1 differs"
    halted = alerts["rollout_halted"]
    assert halted.rollout_id == rollout["id"] and halted.device_id == "" and "1 of 1 devices failed" in halted.detail


def test_last_seen_is_the_last_message_of_any_kind_telemetry_included(db: SQLiteStore) -> None:
    _device(db, "gw-1")
    seen = db.device("gw-1")["last_seen"]  # type: ignore[index]
    _telemetry(db, "gw-1")
    after = db.device("gw-1")["last_seen"]  # type: ignore[index]
    assert after > seen and after == db.telemetry("gw-1")[0]["received_at"]
