"""The telemetry receiver (coordinator/telemetry/receiver.py, run by coordinator/telemetry/supervisor.py) against a
real Mosquitto and SQLite file."""

from __future__ import annotations

import logging
import os
import queue
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from edgefleet.common.mqtt import BrokerConfig
from edgefleet.coordinator.config import CoordinatorConfig
from edgefleet.coordinator.security.broker_auth import BrokerAuth, render_acl_file
from edgefleet.coordinator.service import Coordinator
from edgefleet.coordinator.store.sqlite import SQLiteStore
from edgefleet.coordinator.telemetry.supervisor import IngestLink, ingest_username
from edgefleet.coordinator.telemetry.writer import TelemetryIngest
from edgefleet.local.broker import LocalBroker
from edgefleet.local.fleet import wait_until
from edgefleet.protocol.messages import CoordinatorStatus, Telemetry, parse
from edgefleet.protocol.topics import COORDINATOR_STATUS, PREFIX, Channel, topic
from tests.conftest import Keys, SecuredBroker, broker_auth_lines
from tests.mqtt_probe import MqttProbe


class Ingest:
    """An IngestLink with its queue and database, as the coordinator runs them."""

    def __init__(self, db_path: Path, broker: BrokerConfig, client_id: str = "test-coordinator") -> None:
        self.db = SQLiteStore(db_path)
        self.queue = TelemetryIngest(self.db, linger_s=0.05)
        self.rejected: list[object] = []
        self.link = IngestLink(broker, self.queue, client_id=client_id, on_rejected=self.rejected.append)

    def __enter__(self) -> Ingest:
        self.queue.start()
        self.link.start()
        wait_until(self.link.subscribed.is_set, timeout=10, what="telemetry subscription")
        return self

    def __exit__(self, *_exc: object) -> None:
        self.link.stop()
        self.queue.stop()

    def stored(self) -> int:
        return sum(len(self.db.telemetry(f"dev-{i}", limit=10_000)) for i in range(4))


def _publish_all(broker: LocalBroker, messages: list[tuple[str, bytes]]) -> None:
    probe = MqttProbe(broker.url)
    assert probe.start() == "Success"
    try:
        infos = [probe.client.publish(name, payload, qos=1) for name, payload in messages]
        for info in infos:
            info.wait_for_publish(timeout=30)
    finally:
        probe.stop()


def _reports(count: int) -> list[tuple[str, bytes]]:
    """``count`` reports over four devices; every 10th delivered twice (as after a lost PUBACK)."""
    messages = []
    for i in range(count):
        report = Telemetry(device_id=f"dev-{i % 4}", window_s=1.0, inference_count=i, error_count=0)
        messages.append((topic(report.device_id, Channel.TELEMETRY), report.to_bytes()))
        if i % 10 == 9:
            messages.append(messages[-1])
    return messages


def test_a_burst_is_stored_exactly_once_and_bad_reports_are_rejected(
    tmp_path: Path, mosquitto: LocalBroker, caplog: pytest.LogCaptureFixture
) -> None:
    # Prepare: Mosquitto's default in-flight window is 20 QoS 1 messages per client, so a burst of
    # hundreds only gets through if every delivery is acknowledged.
    broker = BrokerConfig(url=mosquitto.url)
    messages = _reports(400)
    spoofed = Telemetry(device_id="dev-0", window_s=1.0, inference_count=1, error_count=0).to_bytes()
    bad = [
        (topic("dev-1", Channel.TELEMETRY), b"{not json"),
        (topic("dev-1", Channel.TELEMETRY), spoofed),  # dev-1 speaking for dev-0
        (topic("dev-2", Channel.TELEMETRY), b'{"device_id": "dev-2", "window_s": -1}'),
    ]
    with Ingest(tmp_path / "fleet.db", broker) as ingest:
        # Execute
        _publish_all(mosquitto, messages + bad)
        # Assert: 400 unique reports once each, the 40 repeats and the three bad ones not at all.
        wait_until(lambda: ingest.stored() >= 400 and len(ingest.rejected) >= 3, timeout=30, what="ingest")
    assert ingest.stored() == 400
    assert ingest.queue.inserted == 400 and ingest.queue.duplicates == 40
    assert len(ingest.rejected) == 3
    counts = sorted(row["inference_count"] for row in ingest.db.telemetry("dev-1", limit=1000))
    assert counts == list(range(1, 400, 4)), "the spoofed report was not stored under dev-1 or dev-0"
    # The receiver process's reasons reach the coordinator's log, under the ingest link's logger.
    reasons = [r.getMessage() for r in caplog.records if r.name == "edgefleet.coordinator.telemetry.supervisor"]
    assert sum("rejected message on" in reason for reason in reasons) == 3, reasons
    assert any("speaks for" in reason or "dev-0" in reason for reason in reasons), reasons


def test_reports_sent_while_the_connection_is_down_arrive_when_it_returns(
    tmp_path: Path, mosquitto: LocalBroker
) -> None:
    # Prepare: the connection has subscribed once, so the broker keeps its session.
    broker = BrokerConfig(url=mosquitto.url)
    with Ingest(tmp_path / "fleet.db", broker):
        pass
    # Execute: devices report while the coordinator's ingest is away, then it comes back.
    _publish_all(mosquitto, _reports(50))
    with Ingest(tmp_path / "fleet.db", broker) as ingest:
        # Assert: the broker held them for the session and delivers them now.
        wait_until(lambda: ingest.stored() >= 50, timeout=15, what="held reports")
    assert ingest.stored() == 50 and ingest.queue.duplicates == 5


def test_a_killed_receiver_is_started_again_and_what_the_broker_held_arrives(
    tmp_path: Path, mosquitto: LocalBroker
) -> None:
    # Prepare
    broker = BrokerConfig(url=mosquitto.url)
    reports = _reports(60)  # the first 20 and their two repeats are the first 22
    with Ingest(tmp_path / "fleet.db", broker) as ingest:
        _publish_all(mosquitto, reports[:22])
        wait_until(lambda: ingest.stored() >= 20, timeout=15, what="first reports")
        first = ingest.link.pid
        assert first is not None
        # Execute: the receiver dies hard; devices go on reporting meanwhile.
        os.kill(first, signal.SIGKILL)
        wait_until(lambda: not ingest.link.subscribed.is_set(), timeout=5, what="receiver's death seen")
        _publish_all(mosquitto, reports[22:])
        # Assert: a new receiver takes the session over; the broker delivers what it held.
        wait_until(lambda: ingest.link.subscribed.is_set(), timeout=15, what="receiver started again")
        wait_until(lambda: ingest.stored() >= 60, timeout=15, what="held reports")
        assert ingest.link.restarts == 1 and ingest.link.pid not in (None, first)
    assert ingest.stored() == 60 and ingest.queue.duplicates == 6 and ingest.queue.dropped == 0


def test_the_receiver_ends_with_the_coordinator(tmp_path: Path, mosquitto: LocalBroker) -> None:
    # Prepare: a process that runs the ingest as the coordinator does, and says its receiver's pid.
    script = f"""
import sys, time
from pathlib import Path
sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r})
from edgefleet.common.mqtt import BrokerConfig
from tests.test_ingest_link import Ingest
with Ingest(Path({str(tmp_path / "fleet.db")!r}), BrokerConfig(url={mosquitto.url!r})) as ingest:
    print(ingest.link.pid, flush=True)
    time.sleep(60)
"""
    coordinator = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert coordinator.stdout is not None
        receiver = int(coordinator.stdout.readline())
        assert psutil.pid_exists(receiver)
        # Execute: the coordinator dies without a word.
        coordinator.kill()
        coordinator.wait(timeout=5)
        # Assert: its receiver notices (end of its stream) and leaves, rather than taking reports nobody stores.
        psutil.Process(receiver).wait(timeout=10)
    finally:
        coordinator.kill()


def test_a_stop_right_after_the_start_leaves_no_receiver(tmp_path: Path, mosquitto: LocalBroker) -> None:
    ingest = Ingest(tmp_path / "fleet.db", BrokerConfig(url=mosquitto.url))
    children_before = {p.pid for p in psutil.Process().children()}
    started = time.monotonic()
    ingest.queue.start()
    ingest.link.start()
    ingest.link.stop()
    ingest.queue.stop()
    assert time.monotonic() - started < 8
    assert ingest.link.pid is None
    left = [p for p in psutil.Process().children() if p.pid not in children_before and p.is_running()]
    assert not [p for p in left if p.status() != psutil.STATUS_ZOMBIE], left


def test_acl_lets_the_ingest_user_only_read_telemetry() -> None:
    text = render_acl_file("edgefleet-coordinator")
    assert f"user edgefleet-coordinator-ingest\ntopic read {PREFIX}/devices/+/telemetry\n" in text
    assert ingest_username("edgefleet-coordinator") == "edgefleet-coordinator-ingest"


def test_a_device_cannot_take_the_ingest_username(secured_broker: SecuredBroker) -> None:
    from edgefleet.coordinator.security.broker_auth import BrokerAuthError

    auth = BrokerAuth(secured_broker.auth, username=secured_broker.username, password=secured_broker.password)
    with pytest.raises(BrokerAuthError, match="coordinator's broker usernames"):
        auth.apply({ingest_username(secured_broker.username): auth.hash("x")})


@pytest.fixture
def hardened_broker(tmp_path: Path, secured_broker: SecuredBroker) -> Iterator[LocalBroker]:
    """Mosquitto with the coordinator's auth files, device dev-0 enrolled, and ``use_username_as_clientid``
    (the README's advice)."""
    auth = BrokerAuth(secured_broker.auth, username=secured_broker.username, password=secured_broker.password)
    auth.apply({"dev-0": auth.hash("device-password")})
    extra = broker_auth_lines(secured_broker.auth) + "\nuse_username_as_clientid true"
    with LocalBroker(tmp_path / "hardened", prefer="mosquitto", extra_config=extra) as broker:
        yield broker


def test_both_coordinator_connections_stay_up_when_usernames_are_client_ids(
    tmp_path: Path, hardened_broker: LocalBroker, secured_broker: SecuredBroker, keys: Keys
) -> None:
    # Prepare: a coordinator with its broker credentials.
    broker = BrokerConfig(url=hardened_broker.url, username=secured_broker.username, password=secured_broker.password)
    coordinator = Coordinator(CoordinatorConfig(data_dir=tmp_path / "coord", trusted_keys=[keys.public], broker=broker))
    coordinator.start()
    device = MqttProbe(hardened_broker.url, "dev-0", "device-password")
    try:
        wait_until(coordinator.link.subscribed.is_set, timeout=15, what="both connections subscribed")
        assert device.start() == "Success"
        status = device.subscribe(COORDINATOR_STATUS)
        assert status == [1]
        assert parse(CoordinatorStatus, device.messages.get(timeout=5).payload).state == "online"
        # Execute: the device reports; a while passes in which a takeover would show.
        report = Telemetry(device_id="dev-0", window_s=1.0, inference_count=7, error_count=0)
        device.client.publish(topic("dev-0", Channel.TELEMETRY), report.to_bytes(), qos=1).wait_for_publish(5)
        wait_until(lambda: coordinator.db.telemetry("dev-0"), timeout=10, what="report stored")
        # Assert: neither connection knocked the other off (same username would, under this setting).
        assert coordinator.link.connected.is_set() and coordinator.link.ingest_link.subscribed.is_set()
        assert coordinator.db.telemetry("dev-0")[0]["inference_count"] == 7
    finally:
        device.stop()
        coordinator.stop()


def test_the_ingest_user_cannot_publish(hardened_broker: LocalBroker, secured_broker: SecuredBroker) -> None:
    # A leaked ingest password reads telemetry, nothing more: it cannot command or deploy to devices.
    watcher = MqttProbe(hardened_broker.url, secured_broker.username, secured_broker.password)
    ingest = MqttProbe(hardened_broker.url, ingest_username(secured_broker.username), secured_broker.password)
    try:
        assert watcher.start() == "Success" and ingest.start() == "Success"
        assert watcher.subscribe(f"{PREFIX}/devices/+/desired") == [1]
        ingest.publish(topic("dev-0", Channel.DESIRED), b"from the ingest user")
        watcher.publish(topic("dev-0", Channel.DESIRED), b"from the coordinator")
        # The coordinator's own publish, sent after, arrives; the ingest user's never does.
        assert watcher.next().payload == b"from the coordinator"
        with pytest.raises(queue.Empty):
            watcher.messages.get(timeout=1.0)
    finally:
        watcher.stop()
        ingest.stop()


def test_a_receiver_whose_rows_differ_from_the_coordinators_says_why_and_does_not_start(
    mosquitto: LocalBroker,
) -> None:
    """As after an upgrade on disk under a running coordinator: the receiver it starts again is newer."""
    import socket
    from multiprocessing.connection import Connection

    from edgefleet.coordinator.telemetry.rows import REPORT_LAYOUT, TELEMETRY_COLUMNS
    from edgefleet.coordinator.telemetry.supervisor import _settings

    ours, theirs = socket.socketpair()
    with ours, theirs:
        proc = subprocess.Popen(
            [sys.executable, "-m", "edgefleet.coordinator.telemetry.receiver", str(theirs.fileno())],
            pass_fds=[theirs.fileno()],
        )  # fmt: skip
        conn = Connection(ours.detach())
    older = tuple(c for c in TELEMETRY_COLUMNS if c != "latency_histogram")
    conn.send(("start", _settings(BrokerConfig(url=mosquitto.url)), "edgefleet-coordinator", (older, REPORT_LAYOUT[1])))
    events = []
    while True:
        try:
            events.append(conn.recv())
        except EOFError:
            break
    assert proc.wait(timeout=10) == 2
    [(kind, level, _, text)] = events  # no report, no subscription: the broker keeps the reports
    assert kind == "log" and level == logging.ERROR and "restart it" in text, text
    assert f"reports of {len(TELEMETRY_COLUMNS)} columns, the coordinator stores {len(older)} columns" in text
