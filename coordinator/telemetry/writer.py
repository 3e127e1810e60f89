"""Telemetry ingest in batches: reports come in prepared (coordinator/telemetry/rows.py) and are only
queued; a writer thread inserts many rows per transaction (waiting up to ``linger_s`` for a batch to
fill), idempotent by message id (a duplicate delivery is never counted twice).

The reports were acknowledged to the broker when they arrived, so a batch the store refuses is not
given up: while the store itself fails (locked, full, an I/O error) the writer keeps the batch and tries
again with backoff, the queue fills and holds the receiver back; a batch failing for one of its own
reports (a value SQLite refuses) is split until that report is found, and only it is dropped, counted
and logged. At stop a failing store gets a few last tries, then what is queued is dropped and counted.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime

from edgefleet.coordinator.store import FleetStore
from edgefleet.coordinator.telemetry.rows import PreparedReport, prepare
from edgefleet.protocol.messages import Telemetry

__all__ = ["TelemetryIngest"]

log = logging.getLogger(__name__)

RETRY_FIRST_S, RETRY_MAX_S = 0.5, 30.0  # backoff while the store fails
TRIES_AT_STOP = 3  # a store still failing at stop: what it holds is lost after this many more tries


class TelemetryIngest:
    def __init__(self, db: FleetStore, *, batch: int = 2000, linger_s: float = 0.2, max_queue: int = 200_000,
                 block_s: float = 5.0) -> None:  # fmt: skip
        self.db = db
        # A full queue (the database stalled) blocks the caller (the thread reading the telemetry
        # receiver's reports) up to this long before reports are dropped: the receiver then stops
        # reading and the broker holds back further deliveries (QoS 1 in-flight window), where a drop
        # loses reports already acknowledged. Well under the keepalive.
        self.block_s = block_s
        self.batch = batch
        # After the first message of a batch, wait this long for more: a row costs ~3x less in a
        # batch of 2000 than in one of 20 (one commit, one rollup upsert per device and bucket).
        self.linger_s = linger_s
        self.max_queue = max_queue
        # A list under one condition, not a queue.Queue: the writer takes a whole batch in one slice
        # (queue.Queue's per-item get and put cost ~5% of the ingest process at 9k msg/s).
        self._pending: list[PreparedReport] = []
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.inserted = 0
        self.duplicates = 0
        self.dropped = 0
        self._given_up = False  # the store failed its last tries at stop: the rest is dropped at once

    def put(self, message: Telemetry) -> None:
        """Queue a report that arrived in this process just now."""
        self.put_many([prepare(message, datetime.now(UTC))])

    def put_many(self, reports: list[PreparedReport]) -> None:
        """Queue prepared reports (coordinator/telemetry/rows.py), waiting up to ``block_s`` while the queue
        is full; still full, they are dropped and counted."""
        with self._changed:
            if len(self._pending) >= self.max_queue and not self._changed.wait_for(
                lambda: len(self._pending) < self.max_queue, timeout=self.block_s
            ):
                # Still full: the reports were acknowledged to the broker when they arrived, so they
                # are lost; count them so the operator sees the coordinator cannot keep up.
                before = self.dropped
                self.dropped += len(reports)
                if before // 1000 != self.dropped // 1000 or before == 0:
                    log.error("telemetry ingest queue full; %d reports dropped so far", self.dropped)
                return
            was = len(self._pending)
            self._pending.extend(reports)
            if was == 0 or was < self.batch <= len(self._pending):  # the writer waits for a first one, or a full batch
                self._changed.notify_all()

    @property
    def pending(self) -> int:
        """Reports queued for the writer."""
        with self._changed:
            return len(self._pending)

    def start(self) -> None:
        self._stop.clear()  # started again after a stop (the coordinator's API restarted in process)
        self._given_up = False
        self._thread = threading.Thread(target=self._run, name="telemetry-ingest", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with self._changed:
            self._changed.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)  # a failing store gets TRIES_AT_STOP more tries
        self._flush()  # whatever arrived before the stop

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._changed:
                if not self._changed.wait_for(lambda: self._pending or self._stop.is_set(), timeout=0.2):
                    continue
                # Linger for a fuller batch, unless stopping (the stop flushes) or already full.
                self._changed.wait_for(
                    lambda: len(self._pending) >= self.batch or self._stop.is_set(), timeout=self.linger_s
                )
            if items := self._take():
                self._write(items)

    def _take(self) -> list[PreparedReport]:
        with self._changed:
            items = self._pending[: self.batch]
            del self._pending[: self.batch]
            self._changed.notify_all()  # room again for a put that waits
        return items

    def _flush(self) -> None:
        while items := self._take():
            self._write(items)

    def _write(self, items: list[PreparedReport]) -> None:
        delay, failures = RETRY_FIRST_S, 0
        while True:
            if self._given_up:  # stopping with a store that failed its last tries: no more waiting
                self.dropped += len(items)
                return
            try:
                inserted = self.db.add_reports(items)
            except Exception as exc:
                if self.db.refused_report(exc):  # something in the reports themselves: store the others
                    self._set_apart(items)
                    return
                failures += 1  # the store: locked, disk full, I/O error, damaged, or code that does not fit it
                if self._stop.is_set() and failures > TRIES_AT_STOP:
                    self._given_up = True
                    self.dropped += len(items)
                    log.error("telemetry store still failing at stop (%s): the %d reports queued are not stored",
                              exc, len(items) + self.pending)  # fmt: skip
                    return
                if failures == 1 or delay == RETRY_MAX_S:
                    log.error("telemetry store failing (%s: %s); holding %d reports, trying again in %.1f s "
                              "(%d queued)", type(exc).__name__, exc, len(items), delay, self.pending)  # fmt: skip
                if self._stop.is_set():
                    time.sleep(1.0)  # stopping: a few last tries, a second apart
                else:
                    self._stop.wait(delay)
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            if failures:
                log.info("telemetry store back after %d failed tries", failures)
            self.inserted += inserted
            self.duplicates += len(items) - inserted
            return

    def _set_apart(self, items: list[PreparedReport]) -> None:
        """Store ``items`` but those the store refuses, found by halving (a batch of 2000: ~22 writes)."""
        if len(items) > 1:
            half = len(items) // 2
            self._write(items[:half])
            self._write(items[half:])
            return
        (row, (device_id, _), _) = items[0]
        self.dropped += 1
        log.exception("telemetry report %s from %s cannot be stored; dropped", row[0], device_id)
