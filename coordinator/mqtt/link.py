"""The coordinator's MQTT link: publishes desired state, serves chunks, takes in what devices send.

Telemetry comes in on a connection of its own (coordinator/telemetry/supervisor.py); this one carries the
control channels. Devices are told the coordinator is online only once both are subscribed.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import paho.mqtt.client as mqtt
from prometheus_client import Counter

from edgefleet.common.log_limit import PerSenderLog
from edgefleet.common.mqtt import BrokerConfig, ConnectTrouble, make_client
from edgefleet.coordinator.errors import NotFound
from edgefleet.coordinator.mqtt.signer import CommandSigner
from edgefleet.coordinator.registry.artifacts import Registry
from edgefleet.coordinator.store import FleetStore
from edgefleet.coordinator.telemetry.supervisor import IngestLink
from edgefleet.coordinator.telemetry.writer import TelemetryIngest
from edgefleet.protocol.errors import ProtocolError
from edgefleet.protocol.messages import (
    Availability,
    CampaignAssignment,
    ChunkHeader,
    ChunkRequest,
    CommandResult,
    CoordinatorStatus,
    DesiredState,
    ReportedState,
    encode_chunk,
    parse,
    sent_by,
)
from edgefleet.protocol.topics import (
    COORDINATOR_STATUS,
    Channel,
    DeviceTopic,
    channel_subscription,
    coordinator_subscriptions,
    parse_topic,
    shared_subscription,
    topic,
)

__all__ = ["CoordinatorLink"]

log = logging.getLogger(__name__)

REJECTED = Counter("edgefleet_coordinator_rejected_messages", "Invalid messages dropped", ["channel"])
SUPPRESSED = Counter(
    "edgefleet_coordinator_rejection_warnings_suppressed",
    "Warnings about rejected messages held back (per-device limit)",
)
CHUNKS = Counter("edgefleet_coordinator_chunks_served", "Chunks sent to devices", ["kind"])
CHUNK_BYTES = Counter("edgefleet_coordinator_chunk_bytes_served", "Artifact bytes sent to devices", ["kind"])


class CoordinatorLink:
    def __init__(
        self, broker: BrokerConfig, db: FleetStore, registry: Registry, *, client_id: str,
        share_group: str | None = None, signer: CommandSigner | None = None, control_ttl_s: float = 7 * 86_400.0,
    ) -> None:  # fmt: skip
        self.broker = broker
        # Desired states and campaign assignments are signed with the command key (protocol/control.py) and
        # expire after control_ttl_s; without a key they go unsigned (agents with command keys refuse them).
        self.signer = signer
        self.control_ttl_s = control_ttl_s
        # Replicas of one store: telemetry and chunk requests go to one of them (shared subscriptions), the
        # rest (small, idempotent writes) to each.
        self.share_group = share_group
        self.db = db
        self.registry = registry
        self.connected = threading.Event()
        # Set once the broker confirmed the subscriptions of both connections: from then on nothing a
        # device sends is missed.
        self.subscribed = threading.Event()
        self._control_subscribed = threading.Event()
        self._online_lock = threading.Lock()
        self.rejected = 0
        # One device's garbage is warned about a few times a minute, not once a message.
        self._rejections = PerSenderLog(log, on_held=SUPPRESSED.inc)
        self.ingest = TelemetryIngest(db)
        self.ingest_link = IngestLink(
            broker, self.ingest, client_id=client_id, on_rejected=self._count_rejected,
            on_subscribed=self._maybe_online, share_group=share_group,
        )  # fmt: skip
        self.on_connected: Callable[[], None] = lambda: None
        self.client = make_client(broker, client_id, clean_session=True)
        # Chunks are answered on the network thread; allow a burst of them in flight.
        self.client.max_inflight_messages_set(64)
        # Devices send their outbox only while this says "online" (see protocol.topics.COORDINATOR_STATUS).
        self.client.will_set(COORDINATOR_STATUS, CoordinatorStatus(state="offline").to_bytes(), qos=1, retain=True)
        self.client.on_connect = self._on_connect
        self.trouble = ConnectTrouble(broker, log)
        self.client.on_connect_fail = lambda _c, _ud: self.trouble.failed()
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self._subscribe_mid: int | None = None

    def start(self) -> None:
        self.ingest.start()
        self.ingest_link.start()
        self.client.connect_async(self.broker.host, self.broker.port, keepalive=self.broker.keepalive_s)
        self.client.loop_start()

    def stop(self) -> None:
        if self.connected.is_set():
            info = self.client.publish(
                COORDINATOR_STATUS, CoordinatorStatus(state="offline").to_bytes(), qos=1, retain=True
            )
            try:
                info.wait_for_publish(timeout=2.0)
            except RuntimeError as exc:
                log.warning("could not publish the coordinator's offline status: %s", exc)
        self.client.disconnect()
        self.client.loop_stop()
        self.ingest_link.stop()
        self.ingest.stop()

    def publish_desired(self, desired: DesiredState) -> None:
        """Retained QoS 1: a device that is offline now converges when it next connects."""
        payload = self._control_payload(desired)
        info = self.client.publish(topic(desired.device_id, Channel.DESIRED), payload, qos=1, retain=True)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            # paho queues QoS 1 messages while disconnected; other codes mean it did not take it.
            log.warning("desired state for %s not queued: %s", desired.device_id, mqtt.error_string(info.rc))

    def publish_campaign(self, assignment: CampaignAssignment) -> None:
        """Retained QoS 1, like the desired state: which campaign's SuperNode the device runs."""
        payload = self._control_payload(assignment)
        info = self.client.publish(topic(assignment.device_id, Channel.CAMPAIGN), payload, qos=1, retain=True)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            log.warning("campaign assignment for %s not queued: %s", assignment.device_id, mqtt.error_string(info.rc))

    def _control_payload(self, message: DesiredState | CampaignAssignment) -> bytes:
        """The message sent now and valid for control_ttl_s, signed where there is a command key."""
        now = datetime.now(UTC)
        stamped = message.model_copy(update={"sent_at": now, "expires_at": now + timedelta(seconds=self.control_ttl_s)})
        return stamped.to_bytes() if self.signer is None else self.signer.control(stamped).to_bytes()

    # -- paho callbacks (network thread) -------------------------------------------------
    def _on_connect(self, client: mqtt.Client, _ud: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if reason.is_failure:
            self.trouble.failed(refused=str(reason))
            return
        self.trouble.connected()
        telemetry, chunks = channel_subscription(Channel.TELEMETRY), channel_subscription(Channel.CHUNK_REQUESTS)
        subscriptions = [
            (shared_subscription(t, self.share_group) if t == chunks else t, 1)
            for t in coordinator_subscriptions()
            if t != telemetry  # the ingest link's
        ]
        if self.share_group is not None:  # a replica that dies says "offline" (its will): the others answer
            subscriptions.append((COORDINATOR_STATUS, 1))
        _, self._subscribe_mid = client.subscribe(subscriptions)
        self.connected.set()
        log.info("coordinator connected to %s", self.broker.url)
        self.on_connected()

    def _on_subscribe(self, _client: mqtt.Client, _ud: Any, mid: int, _codes: Any, _props: Any) -> None:
        # Only once the broker confirmed our subscriptions may devices send: nothing they send is dropped.
        if mid == self._subscribe_mid:
            self._control_subscribed.set()
            self._maybe_online()

    def _maybe_online(self) -> None:
        """Announce "online" once both connections are subscribed (called from either one's thread)."""
        with self._online_lock:
            if self.subscribed.is_set() or not (
                self._control_subscribed.is_set() and self.ingest_link.subscribed.is_set()
            ):
                return
            self.subscribed.set()
        self.client.publish(COORDINATOR_STATUS, CoordinatorStatus(state="online").to_bytes(), qos=1, retain=True)

    def _answer_status(self, payload: bytes) -> None:
        """Another replica went offline (its last will, or it stopped): while this one is up, the fleet's
        coordinator is online, so say so again (devices hold their outbox while the status is offline)."""
        try:
            status = parse(CoordinatorStatus, payload, topic=COORDINATOR_STATUS)
        except ProtocolError:
            return
        if status.state == "offline" and self.subscribed.is_set():
            log.info("another coordinator replica went offline; this one announces the coordinator online")
            self.client.publish(COORDINATOR_STATUS, CoordinatorStatus(state="online").to_bytes(), qos=1, retain=True)

    def _on_disconnect(self, _c: mqtt.Client, _ud: Any, _flags: Any, reason: Any, _props: Any) -> None:
        self.connected.clear()
        self._control_subscribed.clear()
        self.subscribed.clear()
        log.warning("coordinator disconnected from broker (%s); reconnecting", reason)

    def _on_message(self, _c: mqtt.Client, _ud: Any, msg: mqtt.MQTTMessage) -> None:
        dest = None
        if msg.topic == COORDINATOR_STATUS:
            self._answer_status(bytes(msg.payload))
            return
        try:
            dest = parse_topic(msg.topic)
            if not msg.payload:  # a cleared retained message
                return
            if dest.channel is Channel.CHUNK_REQUESTS:
                self._serve_chunk(sent_by(parse(ChunkRequest, msg.payload, topic=msg.topic), dest.device_id))
            elif dest.channel is Channel.REPORTED:
                self._record_reported(sent_by(parse(ReportedState, msg.payload, topic=msg.topic), dest.device_id))
            elif dest.channel is Channel.AVAILABILITY:
                self.db.record_availability(sent_by(parse(Availability, msg.payload, topic=msg.topic), dest.device_id))
            elif dest.channel is Channel.COMMAND_RESULTS:
                result = sent_by(parse(CommandResult, msg.payload, topic=msg.topic), dest.device_id)
                if not self.db.record_command_result(result):
                    raise ProtocolError(f"result for unknown command {result.command_id}", topic=msg.topic)
                log.info(
                    "command %s on %s: ok=%s %s",
                    result.command_id,
                    result.device_id,
                    result.ok,
                    result.detail,
                )
            else:
                raise ProtocolError(f"coordinator does not consume {dest.channel.value}", topic=msg.topic)
        except ProtocolError as exc:
            self._count_rejected(dest)
            self._rejections.warning(
                dest.device_id if dest else None, "rejected message on %s: %s", msg.topic, exc.reason
            )
        except Exception:  # never let one bad message stop the network thread
            self._count_rejected(dest)
            log.exception("failed to handle message on %s", msg.topic)

    def _record_reported(self, state: ReportedState) -> None:
        """A device's enrolled class is authoritative: a report of another class is refused, not a re-class
        (it would then get that class's bundles and join its gates), and flagged for the alerts."""
        identity = self.db.enrollment.identity(state.device_id)
        enrolled = identity.get("device_class") if identity and identity.get("revoked_at") is None else None
        if enrolled and state.device_class != enrolled:
            problem = f"reported device class {state.device_class!r}, enrolled as {enrolled!r}: report refused"
            self.db.flag_device(state.device_id, problem, device_class=enrolled)
            raise ProtocolError(f"{state.device_id}: {problem}")
        self.db.record_reported(state)

    def _count_rejected(self, dest: DeviceTopic | None) -> None:
        self.rejected += 1
        REJECTED.labels("unknown" if dest is None else dest.channel.value).inc()

    def _serve_chunk(self, request: ChunkRequest) -> None:
        header = ChunkHeader(
            request_id=request.message_id,
            kind=request.kind,
            digest=request.digest,
            offset=request.offset,
            total_size=0,
        )
        try:
            size, data = self.registry.read_range(request.kind, request.digest, request.offset, request.length)
            header.total_size = size
        except NotFound as exc:
            header.error = exc.reason
            data = b""
        self.client.publish(topic(request.device_id, Channel.CHUNKS), encode_chunk(header, data), qos=1)
        CHUNKS.labels(request.kind).inc()
        CHUNK_BYTES.labels(request.kind).inc(len(data))
