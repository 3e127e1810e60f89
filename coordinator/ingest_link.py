"""The telemetry ingest's own MQTT connection, on gmqtt.

Telemetry is the fleet's bulk traffic: a report per device per interval, where the control channels
(reported state, chunk requests, command results) are occasional. It comes in on a connection of its
own, so a flood of reports never queues ahead of a chunk request, and on gmqtt, an asyncio client
that parses many packets from one socket read: measured on these 2 cores (bench/bench_ingest.py),
gmqtt takes ~21 us of CPU per QoS 1 message where paho's loop takes ~73 us (it reads each packet with
several ``recv`` calls after a ``select``), and that is what bounded ingest. The acknowledgements of
one socket read go out in one write (coordinator/gmqtt_acks.py).

The session is persistent (clean session off), so while this connection is down the broker keeps
the reports devices send for it (up to its ``max_queued_messages``) and delivers them on reconnect.
gmqtt acknowledges a report just before it calls back with it, in the same step, and the callback
puts it in the ingest queue at once (blocking while the queue is full, which stops reads so the
broker holds later deliveries back): as with paho, a report the broker counts as delivered is in the
queue unless the process dies in between. (gmqtt's late acknowledgement works only with coroutine
callbacks: a task per message.)

Broker identity: ``<coordinator username>-ingest`` with the coordinator's password (the coordinator's
BrokerAuth writes that user, allowed to read telemetry only), so the two connections stay apart under
Mosquitto's ``use_username_as_clientid``; a broker managed by other means needs that user too.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
from collections.abc import Callable
from typing import Any

from gmqtt import Client
from gmqtt.mqtt.constants import UNLIMITED_RECONNECTS, MQTTv311

from agent.config import BrokerConfig
from coordinator import gmqtt_acks
from coordinator.ingest import TelemetryIngest
from protocol.errors import ProtocolError
from protocol.messages import Telemetry, parse, sent_by
from protocol.topics import Channel, DeviceTopic, channel_subscription, parse_topic

__all__ = ["INGEST_SUFFIX", "IngestLink", "ingest_username"]

log = logging.getLogger(__name__)

# gmqtt logs every failed reconnect try (two warnings each 2 s while a broker is away); our own
# callbacks say once that the connection was lost and once that it is back.
logging.getLogger("gmqtt").setLevel(logging.ERROR)
_GMQTT_LOG = log.getChild("gmqtt")
_GMQTT_LOG.setLevel(logging.ERROR)

INGEST_SUFFIX = "-ingest"
gmqtt_acks.install()  # one write for the acknowledgements of each socket read


def ingest_username(coordinator_username: str) -> str:
    """The broker user of the coordinator's telemetry connection."""
    return coordinator_username + INGEST_SUFFIX


class IngestLink:
    """Subscribes to every device's telemetry and hands each valid report to ``ingest``."""

    def __init__(
        self,
        broker: BrokerConfig,
        ingest: TelemetryIngest,
        *,
        client_id: str,
        on_rejected: Callable[[DeviceTopic | None], None],
        on_subscribed: Callable[[], None] = lambda: None,
    ) -> None:
        self.broker = broker
        self.ingest = ingest
        self.client_id = client_id + INGEST_SUFFIX
        self.on_rejected = on_rejected
        self.on_subscribed = on_subscribed
        self.subscribed = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None  # one per start; stop closes it
        self._thread: threading.Thread | None = None
        self._client: Client | None = None
        self._stopping = False

    def start(self) -> None:
        self._stopping = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="telemetry-mqtt", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._connect(), self._loop)

    def stop(self) -> None:
        """Disconnect (the broker keeps the session) and end the thread; the ingest queue is the caller's."""
        self._stopping = True
        if self._thread is None or self._loop is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._disconnect(), self._loop).result(timeout=5)
        except Exception as exc:
            log.warning("telemetry connection did not close cleanly: %s", exc)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()
        self._thread = None

    # -- on the connection's event loop ---------------------------------------------------
    async def _connect(self) -> None:
        """Connect, retrying with backoff until it works or we stop; gmqtt reconnects after that."""
        client = Client(self.client_id, clean_session=False, logger=_GMQTT_LOG)
        client.set_config({"reconnect_retries": UNLIMITED_RECONNECTS, "reconnect_delay": 2})
        if self.broker.username:
            client.set_auth_credentials(ingest_username(self.broker.username), self.broker.resolved_password())
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        self._client = client
        delay = 1.0
        while not self._stopping:
            try:
                await client.connect(
                    self.broker.host, self.broker.port, ssl=self._ssl(), keepalive=self.broker.keepalive_s,
                    version=MQTTv311,
                )  # fmt: skip
                return
            except Exception as exc:
                log.warning("telemetry connection to %s failed (%s); retrying in %.0f s", self.broker.url, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 60.0)

    async def _disconnect(self) -> None:
        if self._client is not None and self._client.is_connected:
            await self._client.disconnect()
        # A first connect still retrying, or gmqtt's reconnect tries (a broker that is away), would
        # otherwise die pending with the loop.
        tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _ssl(self) -> ssl.SSLContext | bool:
        if not self.broker.tls:
            return False
        return ssl.create_default_context(cafile=str(self.broker.ca_file) if self.broker.ca_file else None)

    def _on_connect(self, client: Client, _flags: Any, _rc: Any, _props: Any) -> None:
        # Subscribed anew on every connect: a broker that restarted without persistence forgot the session.
        client.subscribe(channel_subscription(Channel.TELEMETRY), qos=1)
        log.info("telemetry connection up to %s as %s", self.broker.url, self.client_id)

    def _on_subscribe(self, _client: Client, _mid: int, qos: Any, _props: Any) -> None:
        if any(q not in (0, 1, 2) for q in qos):  # 0x80: refused, e.g. by the broker's ACL
            log.error("broker refused the telemetry subscription (%s): is %s allowed to read telemetry?",
                      qos, ingest_username(self.broker.username or "<coordinator>"))  # fmt: skip
            return
        self.subscribed.set()
        self.on_subscribed()

    def _on_disconnect(self, _client: Client, _packet: Any, exc: Any = None) -> None:
        self.subscribed.clear()
        if not self._stopping:
            log.warning("telemetry connection lost (%s); reconnecting", exc or "closed by the broker")

    def _on_message(self, _client: Client, name: str, payload: bytes, _qos: int, _props: Any) -> None:
        dest = None
        try:
            dest = parse_topic(name)
            if dest.channel is not Channel.TELEMETRY:
                raise ProtocolError(f"telemetry connection got {dest.channel.value}", topic=name)
            self.ingest.put(sent_by(parse(Telemetry, payload, topic=name), dest.device_id))
        except ProtocolError as exc:
            self.on_rejected(dest)
            log.warning("rejected message on %s: %s", name, exc.reason)
        except Exception:  # never let one bad message stop the connection
            self.on_rejected(dest)
            log.exception("failed to handle message on %s", name)
