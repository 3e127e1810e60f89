"""Warnings about rejected messages are bounded per sender: a flooding device cannot fill the journal."""

from __future__ import annotations

import logging

import pytest
from paho.mqtt import publish

from edgefleet.common.log_limit import PerSenderLog
from edgefleet.local.broker import LocalBroker
from edgefleet.local.fleet import LocalFleet, wait_until
from edgefleet.protocol.topics import Channel, topic


def test_each_sender_gets_a_burst_per_window_and_is_told_what_was_held_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    limit = PerSenderLog(logging.getLogger("t"), burst=2, window_s=60.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="t"):
        logged = [limit.warning("dev-a", "bad %d", n) for n in range(10)]
        assert limit.warning("dev-b", "bad b")  # another sender is not held back by dev-a
        now[0] = 61.0
        assert limit.warning("dev-a", "bad again")
    assert logged == [True, True] + [False] * 8 and limit.suppressed == 8
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["bad 0", "bad 1", "bad b", "bad again (and 8 more from dev-a held back in the last 60 s)"]


def test_the_senders_remembered_are_bounded() -> None:
    limit = PerSenderLog(logging.getLogger("t"), burst=1, max_senders=3)
    for n in range(100):
        limit.warning(f"dev-{n}", "x")
    assert len(limit._windows) == 3


def test_a_device_flooding_garbage_gets_a_few_warnings_and_the_rest_are_counted(
    fleet: LocalFleet, mosquitto: LocalBroker
) -> None:
    # Prepare: a real coordinator on a real broker
    fleet.start_coordinator()

    # Execute: one device publishes 200 invalid reported states, another one
    for n in range(200):
        publish.single(
            topic("flood-1", Channel.REPORTED), b"not json %d" % n, hostname="127.0.0.1", port=mosquitto.port
        )
    publish.single(topic("quiet-1", Channel.REPORTED), b"not json", hostname="127.0.0.1", port=mosquitto.port)

    # Assert: five warnings for the flooding device, one for the other, the rest counted in /metrics
    log = fleet.workdir / "coordinator.log"
    wait_until(lambda: "devices/quiet-1/reported" in log.read_text(), timeout=30, what="the quiet device's warning")

    def suppressed() -> float:
        text = fleet.http.get("/metrics").text
        line = next(
            (
                ln
                for ln in text.splitlines()
                if ln.startswith("edgefleet_coordinator_rejection_warnings_suppressed_total")
            ),
            "x 0",
        )
        return float(line.split()[-1])

    wait_until(lambda: suppressed() >= 195, timeout=30, what="195 held-back warnings counted")
    flood_lines = [ln for ln in log.read_text().splitlines() if "rejected message on" in ln and "flood-1" in ln]
    assert len(flood_lines) == 5, flood_lines
