"""Telemetry retention: raw reports and rollup buckets past their age are deleted, in the background."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edgefleet.coordinator.config import TelemetryRetentionConfig
    from edgefleet.coordinator.store.base import FleetStore

__all__ = ["TelemetryPruner"]

log = logging.getLogger(__name__)


class TelemetryPruner:
    """Deletes telemetry past retention at start and then every ``interval_s``, until stopped."""

    def __init__(
        self, db: FleetStore, retention: TelemetryRetentionConfig, *, is_leader: Callable[[], bool] = lambda: True
    ) -> None:
        self.db = db
        self.retention = retention
        self._is_leader = is_leader  # of several coordinators on one store, only the leading one prunes
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="telemetry-pruner", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def prune_once(self) -> dict[str, int]:
        r = self.retention
        deleted = self.db.prune_telemetry(
            raw_days=r.raw_days, minute_days=r.minute_days, hour_days=r.hour_days, stop=self._stop
        )
        if any(deleted.values()):
            log.info("telemetry pruned: %s", ", ".join(f"{table} {n}" for table, n in deleted.items()))
        return deleted

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self._is_leader():
                self._stop.wait(min(self.retention.prune_interval_s, 5.0))
                continue
            try:
                self.prune_once()
            except Exception:  # a failed prune is retried at the next interval; ingest goes on
                log.exception("telemetry prune failed")
            self._stop.wait(self.retention.prune_interval_s)
