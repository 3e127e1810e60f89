"""The telemetry receiver: a process of its own that takes every device's reports off the broker,
validates them and hands them, prepared for storage, to the coordinator in batches.

Why a process: receiving and validating a report costs ~60 us of CPU in Python and storing it ~50 us
more; in one process the two share one interpreter lock and ingest stops near one core (8-9k msg/s on
these 2-core machines). Apart, each has a core (bench/bench_ingest.py). The coordinator starts,
supervises and stops it (coordinator/telemetry/supervisor.py):
``python -m edgefleet.coordinator.telemetry.receiver FD``,
where FD is its end of a socket pair carrying pickled tuples whose first item names them:

- from the coordinator: ``("start", BrokerSettings, client id, REPORT_LAYOUT)`` first (a receiver that
  prepares reports otherwise, the code upgraded under a running coordinator, refuses to start), then
  ``("stop",)``; the end of the stream (the coordinator died) stops the receiver too;
- to the coordinator: ``("reports", [PreparedReport, ...])`` (coordinator/telemetry/rows.py),
  ``("rejected", DeviceTopic | None)``, ``("subscribed", bool)`` and ``("log", level, logger, text)``:
  the receiver's log records, logged again by the coordinator where its logging is set up.

The connection is on gmqtt, an asyncio client that parses every packet of one socket read: ~21 us of
CPU per QoS 1 message where paho's loop takes ~73 us (a ``select`` and several ``recv`` calls per
packet). The acknowledgements of one read go out in one write (coordinator/gmqtt_acks.py). The session
is persistent (clean session off), so while the connection is down the broker keeps the reports devices
send for it (up to its ``max_queued_messages``) and delivers them on reconnect. gmqtt acknowledges a
report just before it calls back with it, and the reports of one read go to the coordinator as soon as
the read is handled: a report the broker counts as delivered is on its way to the writer unless a
process dies in between. When the writer falls behind, its queue fills, the coordinator stops reading
this stream, sending here blocks, reads stop and the broker holds further deliveries back.

Broker identity: ``<coordinator username>-ingest`` with the coordinator's password (the coordinator's
BrokerAuth writes that user, allowed to read telemetry only), so the two connections stay apart under
Mosquitto's ``use_username_as_clientid``; a broker managed by other means needs that user too.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import ssl
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from typing import Any

from gmqtt import Client
from gmqtt.mqtt.constants import UNLIMITED_RECONNECTS, MQTTv311

from edgefleet.common.log_limit import PerSenderLog
from edgefleet.coordinator.telemetry import gmqtt_acks
from edgefleet.coordinator.telemetry.rows import REPORT_LAYOUT, TELEMETRY_COLUMNS, PreparedReport, prepare_arrived
from edgefleet.protocol.errors import ProtocolError
from edgefleet.protocol.messages import Telemetry, parse, sent_by
from edgefleet.protocol.topics import Channel, DeviceTopic, channel_subscription, parse_topic, shared_subscription

__all__ = ["INGEST_SUFFIX", "BrokerSettings", "Receiver", "ingest_username", "main"]

log = logging.getLogger("edgefleet.coordinator.telemetry.supervisor")  # the name the coordinator's operators know

INGEST_SUFFIX = "-ingest"
MAX_BATCH = 1000  # reports per hand-over at most (~110 KB pickled)


def ingest_username(coordinator_username: str) -> str:
    """The broker user of the coordinator's telemetry connection."""
    return coordinator_username + INGEST_SUFFIX


@dataclass(frozen=True)
class BrokerSettings:
    """What the receiver needs of the coordinator's broker config: plain values, the password already
    read from its file by the coordinator."""

    url: str
    host: str
    port: int
    keepalive_s: int
    username: str | None = None
    password: str | None = None
    tls: bool = False
    ca_file: str | None = None
    share_group: str | None = None  # replicas of one store: each report goes to one of them


class Receiver:
    """Subscribes to every device's telemetry and sends each valid report, prepared, to the coordinator."""

    def __init__(self, broker: BrokerSettings, client_id: str, conn: Connection) -> None:
        self.broker = broker
        self.client_id = client_id
        self.conn = conn
        self._client: Client | None = None
        self._batch: list[PreparedReport] = []
        self._received: tuple[str, float] | None = None  # when the reports of this read arrived
        self._stop = asyncio.Event()
        self._orphaned = False  # the coordinator is gone: nothing more can be handed over
        self._rejections = PerSenderLog(log)  # a few warnings a minute per device, however much it sends

    async def run(self) -> None:
        """Receive until the coordinator says stop (or goes away); then disconnect and send what is left."""
        loop = asyncio.get_running_loop()
        loop.add_reader(self.conn.fileno(), self._on_coordinator)
        connecting = asyncio.create_task(self._connect(), name="telemetry-connect")
        await self._stop.wait()
        loop.remove_reader(self.conn.fileno())
        connecting.cancel()
        if self._client is not None and self._client.is_connected:
            await self._client.disconnect()
        self._flush()

    def send(self, event: tuple[Any, ...]) -> None:
        if self._orphaned:
            return
        try:
            self.conn.send(event)
        except OSError:
            self._leave()

    # -- the coordinator's side --------------------------------------------------------
    def _on_coordinator(self) -> None:
        try:
            command = self.conn.recv()
        except (EOFError, OSError):
            self._leave()
            return
        if command[0] == "stop":
            self._stop.set()

    def _leave(self) -> None:
        """The coordinator is gone: stop taking reports nobody would store (the broker keeps them for
        the session, for the next coordinator)."""
        self._orphaned = True
        self._stop.set()

    # -- the broker's side ---------------------------------------------------------------
    async def _connect(self) -> None:
        """Connect, retrying with backoff until it works or we stop; gmqtt reconnects after that."""
        client = Client(self.client_id, clean_session=False, logger=log.getChild("gmqtt"))
        client.set_config({"reconnect_retries": UNLIMITED_RECONNECTS, "reconnect_delay": 2})
        if self.broker.username:
            client.set_auth_credentials(ingest_username(self.broker.username), self.broker.password)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        self._client = client
        delay = 1.0
        while True:
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

    def _ssl(self) -> ssl.SSLContext | bool:
        if not self.broker.tls:
            return False
        return ssl.create_default_context(cafile=self.broker.ca_file)

    def _on_connect(self, client: Client, _flags: Any, _rc: Any, _props: Any) -> None:
        # Subscribed anew on every connect: a broker that restarted without persistence forgot the session.
        client.subscribe(shared_subscription(channel_subscription(Channel.TELEMETRY), self.broker.share_group), qos=1)
        log.info("telemetry connection up to %s as %s", self.broker.url, self.client_id)

    def _on_subscribe(self, _client: Client, _mid: int, qos: Any, _props: Any) -> None:
        if any(q not in (0, 1, 2) for q in qos):  # 0x80: refused, e.g. by the broker's ACL
            log.error("broker refused the telemetry subscription (%s): is %s allowed to read telemetry?",
                      qos, ingest_username(self.broker.username or "<coordinator>"))  # fmt: skip
            return
        self.send(("subscribed", True))

    def _on_disconnect(self, _client: Client, _packet: Any, exc: Any = None) -> None:
        self.send(("subscribed", False))
        if not self._stop.is_set():
            log.warning("telemetry connection lost (%s); reconnecting", exc or "closed by the broker")

    def _on_message(self, _client: Client, name: str, payload: bytes, _qos: int, _props: Any) -> None:
        dest: DeviceTopic | None = None
        try:
            dest = parse_topic(name)
            if dest.channel is not Channel.TELEMETRY:
                raise ProtocolError(f"telemetry connection got {dest.channel.value}", topic=name)
            report = sent_by(parse(Telemetry, payload, topic=name), dest.device_id)
            if self._received is None:  # the first report of this socket read
                now = datetime.now(UTC)
                self._received = now.isoformat(), now.timestamp()
                asyncio.get_running_loop().call_soon(self._flush)  # once gmqtt has handled the whole read
            self._batch.append(prepare_arrived(report, *self._received))
            if len(self._batch) >= MAX_BATCH:
                self._flush()
        except ProtocolError as exc:
            self.send(("rejected", dest))
            self._rejections.warning(dest.device_id if dest else None, "rejected message on %s: %s", name, exc.reason)
        except Exception:  # never let one bad message stop the connection
            self.send(("rejected", dest))
            log.exception("failed to handle message on %s", name)

    def _flush(self) -> None:
        self._received = None
        if self._batch:
            batch, self._batch = self._batch, []
            self.send(("reports", batch))


class _ToCoordinator(logging.Handler):
    """Sends this process's log records to the coordinator, which logs them where its logging goes."""

    def __init__(self, receiver: Receiver) -> None:
        super().__init__()
        self.receiver = receiver

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
            if record.exc_info:
                text += "\n" + logging.Formatter().formatException(record.exc_info)
            self.receiver.send(("log", record.levelno, record.name, text))
        except Exception:  # a record that cannot be formatted
            self.handleError(record)


def main(argv: list[str] | None = None) -> None:
    """``python -m edgefleet.coordinator.telemetry.receiver FD``; see the module's docstring."""
    args = sys.argv[1:] if argv is None else argv
    # Ctrl-C in a terminal reaches the whole process group: the coordinator stops us in its own order.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    conn = Connection(int(args[0]))
    command, broker, client_id, *layout = conn.recv()  # an older coordinator sends no layout
    if command != "start":
        raise SystemExit(f"expected start, got {command!r}")
    receiver = Receiver(broker, client_id, conn)
    logging.basicConfig(level=logging.INFO, handlers=[_ToCoordinator(receiver)], force=True)
    if layout != [REPORT_LAYOUT]:
        # The code on disk changed under a running coordinator (an upgrade): reports prepared the new way
        # would not fit its store. Not connecting leaves them with the broker's session until it restarts.
        theirs = f"{len(layout[0][0])} columns" if layout else "an older layout"
        log.error("telemetry receiver not started: it prepares reports of %d columns, the coordinator stores %s; "
                  "the installed edgefleet changed under the running coordinator: restart it",
                  len(TELEMETRY_COLUMNS), theirs)  # fmt: skip
        raise SystemExit(2)
    # gmqtt logs every failed reconnect try (two warnings each 2 s while a broker is away); our own
    # callbacks say once that the connection was lost and once that it is back.
    logging.getLogger("gmqtt").setLevel(logging.ERROR)
    log.getChild("gmqtt").setLevel(logging.ERROR)
    gmqtt_acks.install()  # one write for the acknowledgements of each socket read
    gc.freeze()  # the modules loaded by now live as long as we do: the collector need not walk them again
    asyncio.run(receiver.run())


if __name__ == "__main__":
    main()
