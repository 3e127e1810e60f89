"""The agent's MQTT link: availability with a last will, subscriptions, and typed publishing.

Incoming payloads are parsed here; anything invalid is logged with its reason, counted, and
dropped. Handlers run on paho's network thread and must not block.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from edgefleet.agent.mqtt.commands import CommandVerifier
from edgefleet.agent.mqtt.control import ControlVerifier
from edgefleet.common.log_limit import PerSenderLog
from edgefleet.common.mqtt import BrokerConfig, ConnectTrouble, make_client
from edgefleet.protocol.errors import ProtocolError
from edgefleet.protocol.messages import (
    Availability,
    CampaignAssignment,
    ChunkHeader,
    Command,
    CoordinatorStatus,
    DesiredState,
    Message,
    decode_chunk,
    parse,
)
from edgefleet.protocol.topics import COORDINATOR_STATUS, RETAINED, Channel, device_subscriptions, parse_topic, topic

__all__ = ["AgentLink", "Handlers", "SendGate"]

log = logging.getLogger(__name__)


class Handlers:
    """What the agent does with each valid inbound message."""

    def __init__(
        self,
        on_desired: Callable[[DesiredState], None],
        on_chunk: Callable[[ChunkHeader, bytes], None],
        on_command: Callable[[Command], None],
        on_connected: Callable[[], None],
        on_campaign: Callable[[CampaignAssignment], None] | None = None,
    ) -> None:
        self.on_desired = on_desired
        self.on_chunk = on_chunk
        self.on_command = on_command
        self.on_connected = on_connected
        self.on_campaign = on_campaign


class SendGate:
    """Whether the outbox may send now: connected, and the coordinator is online.

    A coordinator that announces itself (retained status with an "offline" last will) is waited for
    after every (re)connect, so that nothing is published while nobody subscribes: a broker that
    restarted without persistence acknowledges such messages and drops them, and the outbox would
    then delete them. Once a coordinator has announced itself, the agent remembers that (a marker
    file) and keeps waiting for it across restarts; with a coordinator that never announces (an old
    one, or a plain subscriber in tests) the gate is just "connected".
    """

    def __init__(self, connected: threading.Event, marker: Path | None) -> None:
        self.connected = connected
        self.coordinator_online = threading.Event()
        self._marker = marker
        self.announces = marker is not None and marker.exists()
        self.on_open: Callable[[], None] = lambda: None

    def is_set(self) -> bool:
        return self.connected.is_set() and (self.coordinator_online.is_set() or not self.announces)

    def reconnected(self) -> None:
        self.coordinator_online.clear()  # wait for the coordinator's status again (retained or fresh)

    def status(self, status: CoordinatorStatus) -> None:
        if status.state == "online":
            if not self.announces and self._marker is not None:
                self._marker.parent.mkdir(parents=True, exist_ok=True)
                self._marker.touch()
            self.announces = True
            self.coordinator_online.set()
            self.on_open()
        else:
            self.coordinator_online.clear()
            log.warning("the coordinator is offline; the outbox holds messages until it is back")


class AgentLink:
    def __init__(self, device_id: str, broker: BrokerConfig, handlers: Handlers, commands: CommandVerifier,
                 control: ControlVerifier, *, coordinator_marker: Path | None = None) -> None:  # fmt: skip
        self.device_id = device_id
        self.commands = commands
        self.control = control
        self.broker = broker
        self.handlers = handlers
        self.rejected = 0
        self._rejections = PerSenderLog(log, max_senders=64)
        self.connected = threading.Event()
        self.gate = SendGate(self.connected, coordinator_marker)
        # A persistent session: the broker keeps our subscriptions and QoS 1 messages while we are away.
        self.client = make_client(broker, f"edgefleet-agent-{device_id}", clean_session=False)
        self.client.will_set(
            topic(device_id, Channel.AVAILABILITY),
            Availability(device_id=device_id, state="offline").to_bytes(),
            qos=1,
            retain=True,
        )
        self.client.on_connect = self._on_connect
        self.trouble = ConnectTrouble(broker, log)
        self.client.on_connect_fail = lambda _c, _ud: self.trouble.failed()
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message

    def start(self) -> None:
        """Connect in the background; paho keeps reconnecting while the broker is away."""
        self.client.connect_async(self.broker.host, self.broker.port, keepalive=self.broker.keepalive_s)
        self.client.loop_start()

    def stop(self) -> None:
        if self.connected.is_set():
            info = self.publish(Channel.AVAILABILITY, Availability(device_id=self.device_id, state="stopped"))
            if info is not None:
                try:
                    info.wait_for_publish(timeout=2.0)
                except RuntimeError as exc:
                    log.warning("could not publish 'stopped' availability: %s", exc)
        self.client.disconnect()
        self.client.loop_stop()

    def publish(self, channel: Channel, message: Message, *, qos: int = 1) -> mqtt.MQTTMessageInfo | None:
        """Publish if connected; return None (and publish nothing) while offline."""
        return self.publish_raw(channel, message.to_bytes(), qos=qos)

    def publish_raw(self, channel: Channel, payload: bytes, *, qos: int = 1) -> mqtt.MQTTMessageInfo | None:
        if not self.connected.is_set():
            return None
        info = self.client.publish(topic(self.device_id, channel), payload, qos=qos, retain=channel in RETAINED)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            log.warning("publish on %s failed: %s", channel.value, mqtt.error_string(info.rc))
            return None
        return info

    # -- paho callbacks (network thread) -------------------------------------------------
    def _on_connect(self, client: mqtt.Client, _ud: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if reason.is_failure:
            self.trouble.failed(refused=str(reason))
            return
        self.trouble.connected()
        log.info("connected to %s as %s", self.broker.url, self.device_id)
        self.gate.reconnected()
        self.connected.set()
        client.subscribe([(t, 1) for t in device_subscriptions(self.device_id)])
        self.publish(Channel.AVAILABILITY, Availability(device_id=self.device_id, state="online"))
        self.handlers.on_connected()

    def _on_disconnect(self, _c: mqtt.Client, _ud: Any, _flags: Any, reason: Any, _props: Any) -> None:
        self.connected.clear()
        log.warning("disconnected from broker (%s); reconnecting in the background", reason)

    def _on_message(self, _c: mqtt.Client, _ud: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            if msg.topic == COORDINATOR_STATUS:
                if msg.payload:
                    self.gate.status(parse(CoordinatorStatus, msg.payload, topic=msg.topic))
                return
            dest = parse_topic(msg.topic)
            if dest.device_id != self.device_id:
                raise ProtocolError(f"message for device {dest.device_id!r}", topic=msg.topic)
            if dest.channel in (Channel.DESIRED, Channel.CAMPAIGN) and not msg.payload:
                return  # a cleared retained message
            if dest.channel is Channel.DESIRED:
                self.handlers.on_desired(self.control.desired(msg.payload, topic=msg.topic))
            elif dest.channel is Channel.CHUNKS:
                self.handlers.on_chunk(*decode_chunk(msg.payload, topic=msg.topic))
            elif dest.channel is Channel.COMMANDS:
                self.handlers.on_command(self.commands.verify(msg.payload, topic=msg.topic))
            elif dest.channel is Channel.CAMPAIGN:
                if self.handlers.on_campaign is None:
                    raise ProtocolError("this agent takes part in no campaigns", topic=msg.topic)
                self.handlers.on_campaign(self.control.campaign(msg.payload, topic=msg.topic))
            else:
                raise ProtocolError(f"unexpected channel {dest.channel.value}", topic=msg.topic)
        except ProtocolError as exc:
            self.rejected += 1
            # Bounded per topic: whoever floods a device's topics cannot fill its journal.
            self._rejections.warning(msg.topic, "rejected message on %s: %s", msg.topic, exc.reason)
        except Exception:  # a handler bug must not kill paho's network thread
            self.rejected += 1
            log.exception("handler failed for message on %s", msg.topic)
