"""The coordinator in-process (FastAPI TestClient) against a real Mosquitto and SQLite file."""

from __future__ import annotations

import logging
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.publish as publish
import paho.mqtt.subscribe as subscribe
import pytest
from fastapi.testclient import TestClient

from edgefleet.common.mqtt import BrokerConfig
from edgefleet.coordinator.api.app import create_app
from edgefleet.coordinator.config import CoordinatorConfig
from edgefleet.coordinator.service import Coordinator
from edgefleet.coordinator.store.sqlite import SQLiteStore
from edgefleet.local.broker import LocalBroker
from edgefleet.local.fleet import wait_until
from edgefleet.protocol.messages import DesiredState, ReportedState, Telemetry, parse
from edgefleet.protocol.topics import Channel, topic
from tests.conftest import DigitsModels, Keys, build

TOKEN = "test-token-0123456789abcdef"


@pytest.fixture
def client(tmp_path: Path, mosquitto: LocalBroker, keys: Keys) -> Iterator[tuple[TestClient, Coordinator]]:
    config = CoordinatorConfig(
        data_dir=tmp_path / "coord", trusted_keys=[keys.public], broker=BrokerConfig(url=mosquitto.url)
    )
    coordinator = Coordinator(config)
    with TestClient(create_app(coordinator, token=TOKEN), headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        wait_until(coordinator.link.subscribed.is_set, timeout=10, what="coordinator subscribed")
        yield http, coordinator


def _report(broker: LocalBroker, device_id: str, device_class: str = "x86-gateway") -> None:
    state = ReportedState(
        device_id=device_id,
        device_class=device_class,
        agent_version="t",
        status="idle",
        started_at="2026-01-01T00:00:00Z",
    )
    publish.single(
        topic(device_id, Channel.REPORTED),
        state.to_bytes(),
        qos=1,
        retain=True,
        hostname="127.0.0.1",
        port=broker.port,
    )


def test_api_requires_the_token(client) -> None:  # type: ignore[no-untyped-def]
    http, _ = client
    assert http.get("/api/v1/devices", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert http.get("/api/v1/devices", headers={"Authorization": ""}).status_code == 401
    assert http.get("/api/v1/devices").status_code == 200
    assert http.get("/healthz", headers={"Authorization": ""}).json()["broker_connected"] is True


def test_upload_refuses_tampered_and_untrusted_bundles(
    client, tmp_path: Path, keys: Keys, other_keys: Keys, digits: DigitsModels
) -> None:  # type: ignore[no-untyped-def]
    http, _ = client
    good, _ = build(digits.v1, tmp_path / "good.bundle", keys, version="1")
    with tarfile.open(good) as tar:
        model = tar.getmember("files/model.onnx")
    data = bytearray(good.read_bytes())
    data[model.offset_data + model.size // 2] ^= 0x01
    response = http.post("/api/v1/bundles", content=bytes(data))
    assert response.status_code == 422 and "tampered" in response.json()["detail"]

    foreign, _ = build(digits.v1, tmp_path / "foreign.bundle", other_keys, version="1")
    response = http.post("/api/v1/bundles", content=foreign.read_bytes())
    assert response.status_code == 422 and "not trusted" in response.json()["detail"]

    response = http.post("/api/v1/bundles", content=b"garbage")
    assert response.status_code == 422 and "not a readable bundle" in response.json()["detail"]
    assert http.get("/api/v1/bundles").json() == []


def test_deploy_publishes_retained_desired_state_with_growing_revisions(
    client,
    tmp_path: Path,
    mosquitto: LocalBroker,
    keys: Keys,
    digits: DigitsModels,  # type: ignore[no-untyped-def]
) -> None:
    http, _ = client
    bundle, digest = build(digits.v1, tmp_path / "b.bundle", keys, version="1")
    assert http.post("/api/v1/bundles", content=bundle.read_bytes()).json()["digest"] == digest
    _report(mosquitto, "pi-1")
    _report(mosquitto, "jetson-1", device_class="jetson-orin")
    wait_until(lambda: len(http.get("/api/v1/devices").json()) == 2, what="devices ingested")

    # Only devices of the bundle's class are targeted by a fleet-wide deployment.
    assert [r["device_id"] for r in http.post("/api/v1/deployments", json={"bundle_digest": digest}).json()] == ["pi-1"]
    second = http.put("/api/v1/devices/pi-1/desired", json={"bundle_digest": digest}).json()
    assert second["revision"] == 2

    def retained_desired() -> DesiredState | None:
        # A new subscriber gets the retained message at once, flagged as retained.
        message = subscribe.simple(topic("pi-1", Channel.DESIRED), hostname="127.0.0.1", port=mosquitto.port)
        desired = parse(DesiredState, message.payload)
        return desired if message.retain and desired.revision == 2 else None

    desired = wait_until(retained_desired, timeout=10, what="retained desired state revision 2")
    assert desired.bundle is not None and desired.bundle.digest == digest

    response = http.put("/api/v1/devices/jetson-1/desired", json={"bundle_digest": digest})
    assert response.status_code == 409 and "jetson-orin" in response.json()["detail"]
    assert http.put("/api/v1/devices/nobody/desired", json={"bundle_digest": digest}).status_code == 404
    assert http.post("/api/v1/deployments", json={"bundle_digest": "0" * 64}).status_code == 404
    assert http.post("/api/v1/deployments", json={"bundle_digest": "xyz"}).status_code == 422


def test_telemetry_is_deduplicated_by_message_id(tmp_path: Path) -> None:
    db = SQLiteStore(tmp_path / "fleet.db")
    message = Telemetry(device_id="pi-1", window_s=1.0, inference_count=3, error_count=0)
    assert db.add_telemetry(message) is True
    assert db.add_telemetry(message) is False
    assert len(db.telemetry("pi-1")) == 1


def test_invalid_device_messages_are_counted_and_dropped(client, mosquitto: LocalBroker) -> None:  # type: ignore[no-untyped-def]
    http, coordinator = client
    host, port = "127.0.0.1", mosquitto.port
    publish.single(topic("pi-1", Channel.REPORTED), b"{not json", qos=1, hostname=host, port=port)
    spoof = ReportedState(
        device_id="pi-2",
        device_class="x",
        agent_version="t",
        status="idle",
        started_at="2026-01-01T00:00:00Z",
    )
    publish.single(topic("pi-1", Channel.REPORTED), spoof.to_bytes(), qos=1, hostname=host, port=port)
    publish.single(topic("pi-1", Channel.CHUNK_REQUESTS), b'{"kind": "file"}', qos=1, hostname=host, port=port)
    wait_until(lambda: coordinator.link.rejected >= 3, timeout=10, what="rejections")
    assert http.get("/api/v1/devices").json() == [], "a device cannot speak for another"
    assert "edgefleet_coordinator_rejected_messages_total" in http.get("/metrics").text


def test_batched_ingest_stores_each_message_once_and_flushes_on_stop(tmp_path: Path) -> None:
    from edgefleet.coordinator.telemetry.writer import TelemetryIngest

    db = SQLiteStore(tmp_path / "fleet.db")
    ingest = TelemetryIngest(db, batch=64)
    ingest.start()
    messages = [Telemetry(device_id=f"pi-{i % 7}", window_s=1.0, inference_count=i, error_count=0) for i in range(500)]
    for message in messages + messages[:50]:  # 50 duplicate deliveries
        ingest.put(message)
    ingest.stop()
    assert (ingest.inserted, ingest.duplicates, ingest.dropped) == (500, 50, 0)
    stored = sum(len(db.telemetry(f"pi-{i}", limit=1000)) for i in range(7))
    assert stored == 500


class _StalledDisk(SQLiteStore):
    """A fleet DB whose telemetry writes wait until ``resume`` is set (a stalled disk)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.resume = threading.Event()

    def add_reports(self, items):  # type: ignore[no-untyped-def]
        self.resume.wait(10)
        return super().add_reports(items)


@pytest.mark.parametrize("stall_s", [0.5, 3.0])
def test_a_full_ingest_queue_holds_the_mqtt_thread_back_before_it_drops(tmp_path: Path, stall_s: float) -> None:
    from edgefleet.coordinator.telemetry.writer import TelemetryIngest

    db = _StalledDisk(tmp_path / "fleet.db")
    ingest = TelemetryIngest(db, batch=8, linger_s=0.0, max_queue=8, block_s=1.5)
    ingest.start()
    messages = [Telemetry(device_id="pi-1", window_s=1.0, inference_count=i, error_count=0) for i in range(40)]
    threading.Timer(stall_s, db.resume.set).start()
    started = time.monotonic()
    for message in messages:  # as the receiver's reports come in: one after another
        ingest.put(message)
    ingest.stop()
    if stall_s < 1.5:  # the disk came back while put waited: nothing lost, the sender was only slowed
        assert (ingest.inserted, ingest.dropped) == (40, 0)
        assert time.monotonic() - started >= stall_s - 0.1
    else:  # stalled past the wait: what could not be queued is dropped and counted, the rest stored
        assert ingest.dropped > 0 and ingest.inserted + ingest.dropped == 40
    assert len(db.telemetry("pi-1", limit=100)) == ingest.inserted


def test_stored_report_rows_are_what_pydantic_would_write(tmp_path: Path) -> None:
    """The writer reads rows straight off the model; they must equal model_dump(mode="json") with lists and
    dicts as compact JSON text, for every kind of value a report carries."""
    import json
    from datetime import UTC, datetime, timedelta, timezone

    from edgefleet.coordinator.telemetry.rows import TELEMETRY_COLUMNS, telemetry_row

    reports = [
        Telemetry(device_id="pi-1", window_s=1.0, inference_count=3, error_count=0),
        Telemetry(
            device_id="pi-2", window_s=2.5, inference_count=9, error_count=2, sent_at=datetime(2026, 1, 2, tzinfo=UTC),
            errors_by_kind={"runtime": 2}, runtime_skipped=["tensorrt: not installed"], drift_features={"x": 0.3},
            outbox_dropped={"telemetry": 1}, drift_alert=True, latency_ms_p99=float("inf"), cpu_percent=float("nan"),
            rss_bytes=123, disk_used_percent=50.0, runtime="onnx-cpu", bundle_digest="a" * 64,
            latency_histogram={40: 7, 3: 2}, device_cpu_percent=12.5, memory_used_percent=40.0,
        ),
        Telemetry(device_id="pi-3", window_s=0, inference_count=0, error_count=0,
                  sent_at=datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=timezone(timedelta(hours=-5)))),
        Telemetry(device_id="pi-4", window_s=0, inference_count=0, error_count=0, sent_at=datetime(2026, 1, 2)),
    ]  # fmt: skip
    for report in reports:
        dumped = report.model_dump(mode="json", exclude={"schema_version"})
        compact = {"ensure_ascii": False, "separators": (",", ":")}
        expected = [json.dumps(v, **compact) if isinstance(v, dict | list) else v for v in dumped.values()] + ["now"]
        row = telemetry_row(report, "now")
        assert [*dumped, "received_at"] == TELEMETRY_COLUMNS
        assert [repr(v) for v in row] == [repr(v) for v in expected], report.device_id  # nan == nan by repr
    db = SQLiteStore(tmp_path / "fleet.db")
    assert db.add_telemetry_batch(reports) == 4
    stored = db.telemetry("pi-2")[0]
    assert stored["sent_at"] == "2026-01-02T00:00:00Z" and json.loads(stored["errors_by_kind"]) == {"runtime": 2}


def test_metrics_give_fleet_figures_read_from_the_store(client, mosquitto: LocalBroker) -> None:  # type: ignore[no-untyped-def]
    from prometheus_client.parser import text_string_to_metric_families

    from edgefleet.protocol.messages import Availability, BundleRef

    # Prepare: three devices in two classes, two running digits 1.0, one of them offline (an alert);
    # two reports delivered, one of them twice.
    http, coordinator = client
    db = coordinator.db
    bundle = BundleRef(digest="a" * 64, name="digits", version="1.0")
    for device, device_class, active, state in (
        ("pi-1", "rpi5", bundle, "online"),
        ("pi-2", "rpi5", bundle, "offline"),
        ("gw-1", "x86-gateway", None, "online"),
    ):
        db.record_reported(ReportedState(device_id=device, device_class=device_class, agent_version="t", status="ready",
                                         active=active, started_at="2026-01-01T00:00:00Z"))  # type: ignore[arg-type]  # fmt: skip
        db.record_availability(Availability(device_id=device, state=state))
    report = Telemetry(device_id="pi-1", window_s=1.0, inference_count=3, error_count=0).to_bytes()
    other = Telemetry(device_id="gw-1", window_s=1.0, inference_count=1, error_count=0).to_bytes()
    for name, payload in ((topic("pi-1", Channel.TELEMETRY), report), (topic("pi-1", Channel.TELEMETRY), report),
                          (topic("gw-1", Channel.TELEMETRY), other)):  # fmt: skip
        publish.single(name, payload, qos=1, hostname="127.0.0.1", port=mosquitto.port)
    wait_until(lambda: coordinator.link.ingest.inserted + coordinator.link.ingest.duplicates == 3, timeout=10,
               what="reports handled")  # fmt: skip
    # Execute
    text = http.get("/metrics").text
    # Assert
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("edgefleet_fleet_devices", (("availability", "online"), ("device_class", "rpi5")))] == 1
    assert samples[("edgefleet_fleet_devices", (("availability", "offline"), ("device_class", "rpi5")))] == 1
    assert samples[("edgefleet_fleet_devices", (("availability", "online"), ("device_class", "x86-gateway")))] == 1
    assert samples[("edgefleet_fleet_devices_running", (("model", "digits"), ("version", "1.0")))] == 2
    assert samples[("edgefleet_fleet_alerts", (("kind", "offline"),))] >= 1
    assert samples[("edgefleet_telemetry_reports_stored_total", ())] == 2
    assert samples[("edgefleet_telemetry_duplicates_total", ())] == 1
    assert samples[("edgefleet_telemetry_dropped_total", ())] == 0
    assert samples[("edgefleet_telemetry_receiver_restarts_total", ())] == 0
    assert samples[("edgefleet_coordinator_broker_subscribed", ())] == 1
    assert "edgefleet_rollouts" in text


def test_a_failing_store_holds_the_batch_and_stores_it_once_the_store_recovers(tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    from edgefleet.coordinator.telemetry.writer import TelemetryIngest

    caplog.set_level(logging.INFO, "edgefleet.coordinator.telemetry.writer")
    db = SQLiteStore(tmp_path / "fleet.db")
    with db.locked() as conn:  # a full disk, as SQLite sees it: the file may not grow
        pages = conn.execute("pragma page_count").fetchone()[0]
        conn.execute(f"pragma max_page_count = {pages}")
    ingest = TelemetryIngest(db, batch=50, linger_s=0.0)
    for i in range(120):  # queued first, and each too big for a page's free space: no batch fits
        ingest.put(Telemetry(device_id=f"pi-{i % 3}", window_s=1.0, inference_count=i, error_count=0,
                             runtime_skipped=["cuda: " + "x" * 4000]))  # fmt: skip
    ingest.start()
    wait_until(lambda: "telemetry store failing (OperationalError: database or disk is full)" in caplog.text,
               timeout=10, what="the failure logged")  # fmt: skip
    assert ingest.inserted == 0 and ingest.dropped == 0
    with db.locked() as conn:
        conn.execute("pragma max_page_count = 1073741823")
    wait_until(lambda: ingest.inserted == 120, timeout=15, what="the held reports stored")
    ingest.stop()
    assert ingest.dropped == 0 and "telemetry store back after" in caplog.text
    assert sum(len(db.telemetry(f"pi-{i}", limit=100)) for i in range(3)) == 120
    minutes = sum(r["reports"] for i in range(3) for r in db.telemetry_rollups(f"pi-{i}", "minute"))
    assert minutes == 120, "each report folded into the rollups once"


def test_a_report_the_store_refuses_is_set_apart_and_the_rest_of_its_batch_stored(tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    from edgefleet.coordinator.telemetry.writer import TelemetryIngest

    db = SQLiteStore(tmp_path / "fleet.db")
    with db.locked() as conn:  # a row SQLite itself refuses, as a constraint or a corrupt value would
        conn.execute("create trigger refuse before insert on telemetry when new.inference_count = 13 "
                     "begin select raise(abort, 'refused by the store'); end")  # fmt: skip
    ingest = TelemetryIngest(db, batch=64, linger_s=0.5)
    ingest.start()
    messages = [Telemetry(device_id="pi-1", window_s=1.0, inference_count=i, error_count=0) for i in range(50)]
    for message in messages:
        ingest.put(message)
    ingest.stop()
    assert (ingest.inserted, ingest.dropped) == (49, 1)
    assert f"telemetry report {messages[13].message_id} from pi-1 cannot be stored; dropped" in caplog.text
    assert sorted(r["inference_count"] for r in db.telemetry("pi-1")) == [i for i in range(50) if i != 13]
    assert sum(r["reports"] for r in db.telemetry_rollups("pi-1", "minute")) == 49


def test_a_store_still_failing_at_stop_gets_a_few_tries_then_what_is_queued_is_counted_lost(
    tmp_path: Path, caplog
) -> None:  # type: ignore[no-untyped-def]
    from edgefleet.coordinator.telemetry.writer import TRIES_AT_STOP, TelemetryIngest

    db = SQLiteStore(tmp_path / "fleet.db")
    with db.locked() as conn:
        conn.execute(f"pragma max_page_count = {conn.execute('pragma page_count').fetchone()[0]}")
    ingest = TelemetryIngest(db, batch=10)
    for i in range(60):  # queued before the writer runs: six batches wait at stop; rows too big for free space
        ingest.put(Telemetry(device_id="pi-1", window_s=1.0, inference_count=i, error_count=0,
                             runtime_skipped=["cuda: " + "x" * 4000]))  # fmt: skip
    ingest.start()
    started = time.monotonic()
    ingest.stop()

    assert (ingest.inserted, ingest.dropped) == (0, 60)
    assert time.monotonic() - started < 15 + TRIES_AT_STOP, "one batch's last tries, not six"
    assert caplog.text.count("telemetry store still failing at stop") == 1
