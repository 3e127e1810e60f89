"""Telemetry ingest in batches: the MQTT thread only queues; a writer thread inserts many rows per
transaction (waiting up to ``linger_s`` for a batch to fill), idempotent by message id (a duplicate
delivery is never counted twice)."""

from __future__ import annotations

import logging
import queue
import threading

from coordinator.db import FleetDB
from protocol.messages import Telemetry

__all__ = ["TelemetryIngest"]

log = logging.getLogger(__name__)


class TelemetryIngest:
    def __init__(self, db: FleetDB, *, batch: int = 2000, linger_s: float = 0.2, max_queue: int = 200_000,
                 block_s: float = 5.0) -> None:  # fmt: skip
        self.db = db
        # A full queue (the database stalled) blocks the MQTT thread up to this long before a message
        # is dropped: the broker then holds back further deliveries (QoS 1 in-flight window), where a
        # drop would lose a message that paho acknowledges when put returns. Well under the keepalive.
        self.block_s = block_s
        self.batch = batch
        # After the first message of a batch, wait this long for more: a row costs ~3x less in a
        # batch of 2000 than in one of 20 (one commit, one rollup upsert per device and bucket).
        self.linger_s = linger_s
        self._queue: queue.Queue[Telemetry] = queue.Queue(maxsize=max_queue)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.inserted = 0
        self.duplicates = 0
        self.dropped = 0

    def put(self, message: Telemetry) -> None:
        try:
            self._queue.put(message, timeout=self.block_s)
        except queue.Full:
            # Still full: the message is acknowledged to the broker when this returns, so it is lost;
            # count it so the operator sees the coordinator cannot keep up.
            self.dropped += 1
            if self.dropped % 1000 == 1:
                log.error("telemetry ingest queue full; %d messages dropped so far", self.dropped)

    def start(self) -> None:
        self._stop.clear()  # started again after a stop (the coordinator's API restarted in process)
        self._thread = threading.Thread(target=self._run, name="telemetry-ingest", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._flush()  # whatever arrived before the stop

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                first = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            if self._queue.qsize() < self.batch - 1:
                self._stop.wait(self.linger_s)
            self._write([first, *self._drain()])

    def _drain(self) -> list[Telemetry]:
        items: list[Telemetry] = []
        while len(items) < self.batch - 1:
            try:
                items.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return items

    def _flush(self) -> None:
        while items := self._drain():
            self._write(items)

    def _write(self, items: list[Telemetry]) -> None:
        try:
            inserted = self.db.add_telemetry_batch(items)
        except Exception:  # a database failure must not end ingest for good
            log.exception("telemetry batch of %d not stored", len(items))
            return
        self.inserted += inserted
        self.duplicates += len(items) - inserted
