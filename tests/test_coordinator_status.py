"""Nothing is lost to a broker that restarts without persistence: agents send their outbox only
while the coordinator's retained status says it is online and subscribed (real Mosquitto)."""

from __future__ import annotations

import time
from pathlib import Path

from edgefleet.agent.mqtt.commands import CommandVerifier
from edgefleet.agent.mqtt.control import ControlVerifier
from edgefleet.agent.mqtt.link import AgentLink, Handlers
from edgefleet.agent.mqtt.outbox import Outbox
from edgefleet.agent.mqtt.sender import OutboxSender
from edgefleet.common.mqtt import BrokerConfig
from edgefleet.coordinator.mqtt.link import CoordinatorLink
from edgefleet.coordinator.registry.artifacts import Registry
from edgefleet.coordinator.store.sqlite import SQLiteStore
from edgefleet.local.broker import LocalBroker
from edgefleet.local.fleet import wait_until
from edgefleet.protocol.messages import Telemetry
from edgefleet.protocol.signing import load_trusted_keys
from edgefleet.protocol.topics import Channel
from tests.conftest import Keys

DEVICE = "gw-status"


def test_a_broker_restart_before_the_coordinator_is_back_loses_no_telemetry(
    tmp_path: Path, mosquitto: LocalBroker, keys: Keys
) -> None:
    # Prepare: a real coordinator link storing into SQLite, and an agent link with its outbox sender
    db = SQLiteStore(tmp_path / "fleet.db")
    registry = Registry(tmp_path / "registry", db, load_trusted_keys([keys.public]))
    broker = BrokerConfig(url=mosquitto.url)

    def coordinator() -> CoordinatorLink:
        link = CoordinatorLink(broker, db, registry, client_id="edgefleet-coordinator")
        link.start()
        return link

    stored = lambda: {r["message_id"] for r in db.telemetry(DEVICE, limit=1000)}  # noqa: E731
    noop = lambda *_: None  # noqa: E731
    agent = AgentLink(DEVICE, broker, Handlers(noop, noop, noop, lambda: None),
                      CommandVerifier(DEVICE, load_trusted_keys([keys.public])),
                      ControlVerifier(DEVICE, {}, tmp_path / "agent" / "control-floor.json"),
                      coordinator_marker=tmp_path / "agent" / "coordinator-announces")  # fmt: skip
    outbox = Outbox(tmp_path / "outbox.db", max_bytes=1 << 20, max_messages=1000)
    sender = OutboxSender(outbox, agent.publish_raw, agent.gate, poll_s=0.2)
    agent.gate.on_open = sender.wake
    link = coordinator()
    # The agent has never seen a coordinator announce itself, so it sends at once: the coordinator's
    # telemetry subscription must exist by then (it is made on the coordinator's first start).
    wait_until(link.subscribed.is_set, timeout=15, what="the coordinator subscribed")
    agent.start()
    sender.start()
    sent: list[str] = []

    def put(n: int) -> None:
        for _ in range(n):
            message = Telemetry(device_id=DEVICE, window_s=1.0, inference_count=1, error_count=0)
            outbox.put(Channel.TELEMETRY, message)
            sent.append(message.message_id)
        sender.wake()

    try:
        put(1)
        wait_until(lambda: stored() == set(sent), timeout=10, what="delivery while the coordinator is up")
        # Execute: the coordinator stops (its status says offline), the agent goes on producing ...
        link.stop()
        put(5)
        time.sleep(1.0)
        assert outbox.stats().pending == 5, "held while the coordinator is offline"
        # ... and the broker restarts with no memory: the retained status is gone, the agent is back first.
        mosquitto.stop()
        mosquitto.start()
        wait_until(agent.connected.is_set, timeout=20, what="the agent back on the broker")
        put(3)
        time.sleep(1.5)
        assert outbox.stats().pending == 8, "held: no coordinator has said it is subscribed"
        link = coordinator()
        # Assert: once the coordinator is subscribed and online, every message arrives, once.
        wait_until(lambda: stored() == set(sent), timeout=20, what="the held messages stored")
        wait_until(lambda: outbox.stats().pending == 0, timeout=10, what="the outbox acked empty")
        assert len(db.telemetry(DEVICE, limit=1000)) == len(sent) == 9
    finally:
        sender.stop()
        agent.stop()
        link.stop()
        outbox.close()
