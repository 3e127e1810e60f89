"""The coordinator's end of the telemetry receiver: starts the receiver process
(coordinator/telemetry/receiver.py, where the connection, the validation and the reasons for all of it
are), restarts it if it dies, and queues the reports it sends for the writer (coordinator/telemetry/writer.py).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from edgefleet.common.mqtt import BrokerConfig
from edgefleet.coordinator.telemetry.receiver import INGEST_SUFFIX, BrokerSettings, ingest_username
from edgefleet.coordinator.telemetry.rows import REPORT_LAYOUT
from edgefleet.coordinator.telemetry.writer import TelemetryIngest
from edgefleet.protocol.topics import DeviceTopic

__all__ = ["INGEST_SUFFIX", "IngestLink", "ingest_username"]

log = logging.getLogger(__name__)

_RESTART_DELAYS = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)  # after the receiver died unasked, per death in a row
_STABLE_S = 60.0  # a receiver that ran this long died once, not in a loop


class IngestLink:
    """Runs the telemetry receiver and hands each batch of valid reports it sends to ``ingest``."""

    def __init__(
        self,
        broker: BrokerConfig,
        ingest: TelemetryIngest,
        *,
        client_id: str,
        on_rejected: Callable[[DeviceTopic | None], None],
        on_subscribed: Callable[[], None] = lambda: None,
        share_group: str | None = None,
    ) -> None:
        self.broker = broker
        self.share_group = share_group
        self.ingest = ingest
        self.client_id = client_id + INGEST_SUFFIX
        self.on_rejected = on_rejected
        self.on_subscribed = on_subscribed
        self.subscribed = threading.Event()
        self.restarts = 0  # receivers that died unasked and were started again
        self._stopping = threading.Event()
        self._lock = threading.Lock()  # the current receiver, replaced by a restart
        self._proc: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the receiver; returns at once (it connects while the coordinator goes on starting)."""
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="telemetry-receiver", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Ask the receiver to disconnect (the broker keeps the session), queue the reports it still
        sends, and wait for it to end; the ingest queue is the caller's."""
        self._stopping.set()
        with self._lock:
            conn = self._conn
        if conn is not None:  # else none started yet: the starting one is told to stop (_spawn)
            with contextlib.suppress(OSError):  # already gone: the reading thread has seen it end
                conn.send(("stop",))
        if self._thread is not None:
            self._thread.join(timeout=10)
            if self._thread.is_alive():
                log.warning("telemetry receiver did not stop within 10 s; killing it")
        self._end_receiver()
        self.subscribed.clear()
        self._thread = None

    @property
    def pid(self) -> int | None:
        """The receiver's process id, while one runs."""
        with self._lock:
            return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    # -- the reading thread ------------------------------------------------------------
    def _run(self) -> None:
        deaths = 0  # in a row: a receiver that ran a while resets the backoff
        while not self._stopping.is_set():
            started = time.monotonic()
            try:
                self._read(self._spawn())
            except OSError as exc:
                log.error("could not start the telemetry receiver: %s", exc)
            if self._stopping.is_set():
                break
            self.subscribed.clear()
            code = self._end_receiver()
            deaths = 1 if time.monotonic() - started > _STABLE_S else deaths + 1
            delay = _RESTART_DELAYS[min(deaths, len(_RESTART_DELAYS)) - 1]
            self.restarts += 1
            log.error("telemetry receiver ended unasked (exit code %s); starting it again in %.1f s", code, delay)
            self._stopping.wait(delay)

    def _spawn(self) -> Connection:
        ours, theirs = socket.socketpair()
        with ours, theirs:
            proc = subprocess.Popen(
                [sys.executable, "-m", "edgefleet.coordinator.telemetry.receiver", str(theirs.fileno())],
                pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL,
            )  # fmt: skip
            conn = Connection(ours.detach())
        with self._lock:
            self._proc, self._conn = proc, conn
            stopping = self._stopping.is_set()  # a stop that came while this one started saw no receiver
        conn.send(("start", _settings(self.broker, self.share_group), self.client_id, REPORT_LAYOUT))
        if stopping:
            conn.send(("stop",))
        return conn

    def _read(self, conn: Connection) -> None:
        """Handle what the receiver sends until it ends."""
        while True:
            try:
                event = conn.recv()
            except (EOFError, OSError):
                return
            try:
                self._handle(event)
            except Exception:  # a bad event must not end the reading; the receiver goes on
                log.exception("telemetry receiver sent what could not be handled: %.200r", event)

    def _handle(self, event: tuple[Any, ...]) -> None:
        kind = event[0]
        if kind == "reports":
            self.ingest.put_many(event[1])
        elif kind == "rejected":
            self.on_rejected(event[1])
        elif kind == "subscribed":
            if event[1]:
                self.subscribed.set()
                self.on_subscribed()
            else:
                self.subscribed.clear()
        elif kind == "log":
            _, level, name, text = event
            logging.getLogger(name).log(level, "%s", text)
        else:
            raise ValueError(f"unknown event {kind!r}")

    def _end_receiver(self) -> int | None:
        """Wait for the current receiver to end, killing it after 5 s; its exit code."""
        with self._lock:
            proc, conn = self._proc, self._conn
            self._proc = self._conn = None
        if conn is not None:
            conn.close()
        if proc is None:
            return None
        try:
            return proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()


def _settings(broker: BrokerConfig, share_group: str | None = None) -> BrokerSettings:
    """The receiver's share of the broker config; the password file is read anew at every start."""
    return BrokerSettings(
        url=broker.url, host=broker.host, port=broker.port, keepalive_s=broker.keepalive_s,
        username=broker.username, password=broker.resolved_password(), tls=broker.tls,
        ca_file=str(broker.ca_file) if broker.ca_file else None, share_group=share_group,
    )  # fmt: skip
