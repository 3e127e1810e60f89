"""The durable outbox on real SQLite files, and its sender against a real Mosquitto."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from edgefleet.agent.mqtt.outbox import PRIORITY, Outbox
from edgefleet.agent.mqtt.sender import OutboxSender
from edgefleet.common.mqtt import BrokerConfig, make_client
from edgefleet.local.broker import LocalBroker
from edgefleet.local.fleet import wait_until
from edgefleet.protocol.messages import Availability, CommandResult, ReportedState, Telemetry
from edgefleet.protocol.topics import RETAINED, Channel, parse_topic, topic

DEVICE = "gw-outbox"
ROOMY = {"max_bytes": 10_000_000, "max_messages": 10_000}


def _telemetry(n: int = 0) -> Telemetry:
    return Telemetry(device_id=DEVICE, window_s=30.0, inference_count=n, error_count=0)


def _result(detail: str = "") -> CommandResult:
    return CommandResult(device_id=DEVICE, command_id=uuid.uuid4().hex, ok=True, detail=detail)


def _state(status: str = "ready") -> ReportedState:
    return ReportedState(
        device_id=DEVICE,
        device_class="x86-gateway",
        agent_version="0.1.0",
        status=status,  # type: ignore[arg-type]
        started_at=datetime.now(UTC),
    )


def _ids(box: Outbox) -> list[str]:
    return [item.message_id for item in box.pending(10_000)]


@pytest.fixture
def open_outbox(tmp_path: Path) -> Iterator[Callable[..., Outbox]]:
    """Open outboxes (on ``tmp_path/outbox.db`` unless told); all are closed after the test."""
    opened: list[Outbox] = []

    def open_(path: Path | None = None, **bounds: int) -> Outbox:
        outbox = Outbox(path or tmp_path / "outbox.db", **(bounds or ROOMY))
        opened.append(outbox)
        return outbox

    yield open_
    for outbox in opened:
        outbox.close()


@pytest.fixture
def box(open_outbox: Callable[..., Outbox]) -> Outbox:
    return open_outbox()


# -- queueing --------------------------------------------------------------------------------
def test_put_pending_ack_round_trip(box: Outbox) -> None:
    message = _telemetry(7)

    box.put(Channel.TELEMETRY, message)
    [item] = box.pending(10)

    assert (item.message_id, item.channel, item.payload) == (message.message_id, Channel.TELEMETRY, message.to_bytes())
    assert item.size == len(message.to_bytes()) and item.priority == PRIORITY[Channel.TELEMETRY]
    assert box.stats().pending == 1 and box.stats().pending_bytes == item.size
    box.ack([item.id])
    assert box.pending(10) == [] and box.stats().pending == 0


def test_a_new_reported_state_replaces_the_pending_one(box: Outbox) -> None:
    first, second = _state("downloading"), _state("ready")

    box.put(Channel.REPORTED, first)
    [in_flight] = box.pending(1)
    box.put(Channel.REPORTED, second)
    box.ack([in_flight.id])  # the ack of the replaced state arrives late

    assert _ids(box) == [second.message_id]
    assert box.stats().dropped[Channel.REPORTED] == 0, "a superseded state is not a loss"


def test_delivery_is_state_then_results_then_telemetry_each_in_put_order(box: Outbox) -> None:
    telemetry = [_telemetry(n) for n in range(5)]
    results = [_result(str(n)) for n in range(3)]
    state = _state()
    sequence = [
        (Channel.TELEMETRY, telemetry[0]),
        (Channel.COMMAND_RESULTS, results[0]),
        (Channel.TELEMETRY, telemetry[1]),
        (Channel.REPORTED, state),
        (Channel.TELEMETRY, telemetry[2]),
        (Channel.COMMAND_RESULTS, results[1]),
        (Channel.TELEMETRY, telemetry[3]),
        (Channel.COMMAND_RESULTS, results[2]),
        (Channel.TELEMETRY, telemetry[4]),
    ]

    for channel, message in sequence:
        box.put(channel, message)

    expected = [state, *results, *telemetry]
    assert _ids(box) == [m.message_id for m in expected]
    # Taking it batch by batch, acking as it goes, gives the same order.
    seen: list[str] = []
    while batch := box.pending(2):
        seen += [item.message_id for item in batch]
        box.ack([item.id for item in batch])
    assert seen == [m.message_id for m in expected]


def test_only_the_outbox_channels_with_their_own_message_types_are_accepted(box: Outbox) -> None:
    with pytest.raises(ValueError, match="not sent through the outbox"):
        box.put(Channel.AVAILABILITY, Availability(device_id=DEVICE, state="online"))
    with pytest.raises(ValueError, match="cannot go on channel 'reported'"):
        box.put(Channel.REPORTED, _telemetry())
    assert box.stats().pending == 0


# -- bounds ----------------------------------------------------------------------------------
def test_full_outbox_evicts_oldest_telemetry_then_results_and_never_the_state(
    open_outbox: Callable[..., Outbox],
) -> None:
    box = open_outbox(max_bytes=10_000_000, max_messages=4)
    state, r1 = _state(), _result("1")
    t1, t2 = _telemetry(1), _telemetry(2)
    for channel, message in [
        (Channel.TELEMETRY, t1),
        (Channel.REPORTED, state),
        (Channel.COMMAND_RESULTS, r1),
        (Channel.TELEMETRY, t2),
    ]:
        box.put(channel, message)

    r3, r4, r5, r6 = _result("3"), _result("4"), _result("5"), _result("6")
    box.put(Channel.COMMAND_RESULTS, r3)  # evicts t1, the oldest telemetry
    assert _ids(box) == [state.message_id, r1.message_id, r3.message_id, t2.message_id]
    box.put(Channel.COMMAND_RESULTS, r4)  # evicts t2: no telemetry left
    box.put(Channel.COMMAND_RESULTS, r5)  # evicts r1, the oldest result
    box.put(Channel.COMMAND_RESULTS, r6)  # evicts r3
    assert _ids(box) == [state.message_id, r4.message_id, r5.message_id, r6.message_id]

    dropped = box.stats().dropped
    assert dropped == {Channel.REPORTED: 0, Channel.COMMAND_RESULTS: 2, Channel.TELEMETRY: 2}


def test_a_newcomer_that_ranks_below_everything_pending_is_dropped_itself(
    open_outbox: Callable[..., Outbox],
) -> None:
    box = open_outbox(max_bytes=10_000_000, max_messages=2)
    state, result = _state(), _result()
    box.put(Channel.REPORTED, state)
    box.put(Channel.COMMAND_RESULTS, result)

    box.put(Channel.TELEMETRY, _telemetry())
    box.put(Channel.TELEMETRY, _telemetry())

    assert _ids(box) == [state.message_id, result.message_id]
    assert box.stats().dropped[Channel.TELEMETRY] == 2
    # A newer state still fits: it replaces the pending one.
    newer = _state("error")
    box.put(Channel.REPORTED, newer)
    assert _ids(box) == [newer.message_id, result.message_id]


def test_byte_bound_evicts_as_many_old_telemetry_messages_as_the_newcomer_needs(
    open_outbox: Callable[..., Outbox],
) -> None:
    small = [_telemetry(n) for n in range(4)]  # same size each: one-digit counters
    size = len(small[0].to_bytes())
    big = _result("x" * (2 * size))
    box = open_outbox(max_bytes=4 * size + 10, max_messages=100)
    for message in small:
        box.put(Channel.TELEMETRY, message)

    box.put(Channel.COMMAND_RESULTS, big)  # about 2.3 telemetry messages large

    assert _ids(box) == [big.message_id, small[3].message_id]
    stats = box.stats()
    assert stats.pending_bytes <= box.max_bytes and stats.dropped[Channel.TELEMETRY] == 3
    # A message larger than the whole outbox is dropped and costs nothing pending.
    box.put(Channel.COMMAND_RESULTS, _result("y" * 4 * size))
    assert _ids(box) == [big.message_id, small[3].message_id]
    assert box.stats().dropped[Channel.COMMAND_RESULTS] == 1


# -- durability ------------------------------------------------------------------------------
def test_pending_messages_and_dropped_counters_survive_close_and_reopen(
    tmp_path: Path, open_outbox: Callable[..., Outbox]
) -> None:
    path = tmp_path / "outbox.db"
    box = Outbox(path, max_bytes=10_000_000, max_messages=3)
    messages = [_telemetry(n) for n in range(5)]
    for message in messages:
        box.put(Channel.TELEMETRY, message)
    box.put(Channel.REPORTED, _state("downloading"))
    state = _state("ready")
    box.put(Channel.REPORTED, state)
    before = box.stats()
    box.close()

    reopened = open_outbox(path, max_bytes=10_000_000, max_messages=3)

    assert _ids(reopened) == [state.message_id, messages[3].message_id, messages[4].message_id]
    assert reopened.stats() == before
    assert before.dropped == {Channel.REPORTED: 0, Channel.COMMAND_RESULTS: 0, Channel.TELEMETRY: 3}
    assert reopened.durable


_PUT_THEN_SIGKILL = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from edgefleet.agent.mqtt.outbox import Outbox
    from edgefleet.protocol.messages import Telemetry
    from edgefleet.protocol.topics import Channel

    box = Outbox(Path(sys.argv[1]), max_bytes=10_000_000, max_messages=10_000)
    for n in range(int(sys.argv[2])):
        message = Telemetry(
            message_id=f"{n:032x}", device_id="gw-outbox", window_s=1.0, inference_count=n, error_count=0
        )
        box.put(Channel.TELEMETRY, message)
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_every_put_that_returned_survives_sigkill(tmp_path: Path) -> None:
    path, n = tmp_path / "outbox.db", 200

    child = subprocess.run(
        [sys.executable, "-c", _PUT_THEN_SIGKILL, str(path), str(n)], capture_output=True, text=True, timeout=60
    )

    assert child.returncode == -signal.SIGKILL, child.stderr
    assert path.with_name("outbox.db-wal").exists(), "killed before the WAL was checkpointed"
    with Outbox(path, **ROOMY) as box:
        assert _ids(box) == [f"{i:032x}" for i in range(n)]


@pytest.mark.parametrize("damage", ["not a database", "damaged pages"])
def test_a_corrupt_file_is_moved_aside_and_a_fresh_outbox_works(
    tmp_path: Path, open_outbox: Callable[..., Outbox], damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "outbox.db"
    if damage == "not a database":
        path.write_bytes(b"this is no SQLite file " * 500)
    else:
        with Outbox(path, **ROOMY) as old:
            for _ in range(100):
                old.put(Channel.COMMAND_RESULTS, _result("z" * 1000))
        data = bytearray(path.read_bytes())
        data[3 * 4096 : 6 * 4096] = b"\xff" * (3 * 4096)
        path.write_bytes(data)
    original = path.read_bytes()

    with caplog.at_level(logging.ERROR, logger="edgefleet.agent.mqtt.outbox"):
        box = open_outbox(path)

    [aside] = tmp_path.glob("outbox.db.corrupt-*")
    assert aside.read_bytes() == original
    assert "is corrupt" in caplog.text and str(aside) in caplog.text
    assert box.durable and box.stats().pending == 0
    message = _telemetry()
    box.put(Channel.TELEMETRY, message)
    box.close()
    with Outbox(path, **ROOMY) as again:
        assert _ids(again) == [message.message_id]


# -- sender on a real broker -----------------------------------------------------------------
class _Observer:
    """A separate paho client subscribed to the device's outbox topics; records what arrives."""

    def __init__(self, url: str) -> None:
        self.ready = threading.Event()
        self.received: list[tuple[Channel, str]] = []
        self._lock = threading.Lock()
        self.client = make_client(BrokerConfig(url=url), "outbox-test-observer", clean_session=True)
        self.client.reconnect_delay_set(min_delay=1, max_delay=1)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *_: self.ready.set()
        self.client.on_disconnect = lambda *_: self.ready.clear()
        self.client.on_message = self._on_message
        config = BrokerConfig(url=url)
        self.client.connect_async(config.host, config.port)
        self.client.loop_start()

    def _on_connect(self, client: mqtt.Client, _ud: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if not reason.is_failure:
            client.subscribe([(topic(DEVICE, channel), 1) for channel in PRIORITY])

    def _on_message(self, _c: mqtt.Client, _ud: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.received.append((parse_topic(msg.topic).channel, json.loads(msg.payload)["message_id"]))

    def ids(self) -> list[str]:
        with self._lock:
            return [message_id for _, message_id in self.received]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class _Link:
    """The agent's side, as AgentLink: a real paho client publishing raw payloads with QoS 1.

    It reports itself connected only once the observer listens, so that after a broker restart
    nothing it publishes can race past the observer's new subscription.
    """

    def __init__(self, url: str, observer: _Observer) -> None:
        self.connected = threading.Event()
        self._observer = observer
        self.client = make_client(BrokerConfig(url=url), f"edgefleet-agent-{DEVICE}", clean_session=True)
        self.client.reconnect_delay_set(min_delay=1, max_delay=1)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda *_: self.connected.clear()
        config = BrokerConfig(url=url)
        self.client.connect_async(config.host, config.port)
        self.client.loop_start()

    def _on_connect(self, _c: mqtt.Client, _ud: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if not reason.is_failure and self._observer.ready.wait(10):
            self.connected.set()

    def publish(self, channel: Channel, payload: bytes) -> mqtt.MQTTMessageInfo | None:
        if not self.connected.is_set():
            return None
        info = self.client.publish(topic(DEVICE, channel), payload, qos=1, retain=channel in RETAINED)
        return info if info.rc == mqtt.MQTT_ERR_SUCCESS else None

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def start_sender(box: Outbox) -> Iterator[Callable[..., OutboxSender]]:
    """Start senders on ``box``; each is stopped before the outbox closes, whatever the test did."""
    started: list[OutboxSender] = []

    def start(*args: Any, **kwargs: Any) -> OutboxSender:
        sender = OutboxSender(box, *args, **kwargs)
        sender.start()
        started.append(sender)
        return sender

    yield start
    for sender in reversed(started):
        sender.stop()


@pytest.fixture
def live(mosquitto: LocalBroker) -> Iterator[tuple[_Observer, _Link]]:
    observer = _Observer(mosquitto.url)
    wait_until(observer.ready.is_set, timeout=10, what="the observer's subscription")
    link = _Link(mosquitto.url, observer)
    wait_until(link.connected.is_set, timeout=10, what="the agent's link")
    yield observer, link
    link.close()
    observer.close()


def test_messages_put_while_the_broker_is_down_are_delivered_in_order_when_it_returns(
    mosquitto: LocalBroker, live: tuple[_Observer, _Link], box: Outbox, start_sender: Callable[..., OutboxSender]
) -> None:
    observer, link = live
    sender = start_sender(link.publish, link.connected)
    first = _telemetry(0)
    box.put(Channel.TELEMETRY, first)
    sender.wake()
    wait_until(lambda: observer.ids() == [first.message_id], timeout=5, what="delivery while connected")

    mosquitto.stop()
    wait_until(lambda: not link.connected.is_set() and not observer.ready.is_set(), timeout=5, what="the outage")
    telemetry = [_telemetry(n) for n in range(1, 11)]
    results = [_result(str(n)) for n in range(3)]
    states = [_state("downloading"), _state("ready")]
    for n, message in enumerate(telemetry):
        box.put(Channel.TELEMETRY, message)
        if n % 4 == 0:
            box.put(Channel.COMMAND_RESULTS, results[n // 4])
        if n in (1, 5):
            box.put(Channel.REPORTED, states[n // 5])
        sender.wake()
    time.sleep(1.2)  # the sender polls at least once while offline
    assert box.stats().pending == 1 + len(results) + len(telemetry)

    mosquitto.start()

    expected = [first, states[-1], *results, *telemetry]
    wait_until(lambda: len(observer.ids()) >= len(expected), timeout=15, what="delivery after the outage")
    time.sleep(0.3)  # anything beyond the expected would show up now
    assert observer.ids() == [m.message_id for m in expected]
    wait_until(lambda: box.stats().pending == 0, timeout=5, what="the outbox to be acked empty")
    assert sender.delivered == len(expected)


def test_concurrent_puts_while_the_sender_runs_lose_nothing(
    live: tuple[_Observer, _Link], box: Outbox, start_sender: Callable[..., OutboxSender]
) -> None:
    observer, link = live
    sender = start_sender(link.publish, link.connected, batch=7)
    put: dict[int, list[tuple[Channel, str]]] = {}

    def producer(worker: int) -> None:
        mine = put.setdefault(worker, [])
        for n in range(40):
            channel, message = (
                (Channel.COMMAND_RESULTS, _result(f"{worker}/{n}"))
                if n % 5 == 0
                else (Channel.TELEMETRY, _telemetry(n))
            )
            box.put(channel, message)
            mine.append((channel, message.message_id))
            sender.wake()

    threads = [threading.Thread(target=producer, args=(worker,)) for worker in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)

    expected = {message_id for sent in put.values() for _, message_id in sent}
    assert len(expected) == 160
    wait_until(lambda: set(observer.ids()) >= expected, timeout=15, what="every message to arrive")
    wait_until(lambda: box.stats().pending == 0, timeout=5, what="the outbox to be acked empty")
    received = observer.ids()
    assert set(received) == expected
    # At least once allows duplicates, but with a healthy link and a 10 s ack timeout one would
    # mean the sender sent a delivered message again.
    assert [m for m, n in Counter(received).items() if n > 1] == []
    assert sender.delivered == 160
    # Each producer's messages arrive in the order it put them, channel by channel.
    first_seen = {message_id: i for i, message_id in reversed(list(enumerate(received)))}
    for sent in put.values():
        for channel in (Channel.COMMAND_RESULTS, Channel.TELEMETRY):
            positions = [first_seen[m] for c, m in sent if c is channel]
            assert positions == sorted(positions)


# -- sender faults that a healthy broker does not produce ------------------------------------
def test_unconfirmed_or_refused_publishes_stay_pending(box: Outbox, start_sender: Callable[..., OutboxSender]) -> None:
    connected = threading.Event()
    connected.set()
    calls: list[bytes] = []

    def never_acked(_channel: Channel, payload: bytes) -> mqtt.MQTTMessageInfo | None:
        calls.append(payload)
        return mqtt.MQTTMessageInfo(len(calls))  # a broker that never sends the PUBACK

    messages = [_telemetry(n) for n in range(3)]
    for message in messages:
        box.put(Channel.TELEMETRY, message)
    sender = start_sender(never_acked, connected, ack_timeout_s=0.3, poll_s=0.2)
    wait_until(lambda: len(calls) >= 6, timeout=5, what="a second attempt after the ack timeout")
    sender.stop()
    assert calls[:3] == calls[3:6] == [m.to_bytes() for m in messages]
    assert _ids(box) == [m.message_id for m in messages] and sender.delivered == 0

    refused = start_sender(lambda _c, _p: None, connected, poll_s=0.1)
    time.sleep(0.3)
    refused.stop()
    assert _ids(box) == [m.message_id for m in messages] and refused.delivered == 0


def test_stop_is_prompt_while_waiting_for_a_puback(box: Outbox, start_sender: Callable[..., OutboxSender]) -> None:
    connected = threading.Event()
    connected.set()
    published = threading.Event()

    def never_acked(_channel: Channel, _payload: bytes) -> mqtt.MQTTMessageInfo | None:
        published.set()
        return mqtt.MQTTMessageInfo(1)

    box.put(Channel.TELEMETRY, _telemetry())
    sender = start_sender(never_acked, connected)  # the default 10 s ack timeout
    assert published.wait(5)

    started = time.monotonic()
    sender.stop()

    assert time.monotonic() - started < 1.0
    assert box.stats().pending == 1
