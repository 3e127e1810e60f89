"""Which coordinator process runs the fleet-wide jobs: the rollout engine, telemetry retention and the
republishing of desired state.

On the SQLite store there is one coordinator, and it always leads (``SoleLeader``). Replicas on one
PostgreSQL database elect one with a session-level advisory lock (``AdvisoryLockLeader``): each holds
a connection of its own and tries to take the lock every ``check_s``; the one that has it leads until
its connection ends. A leader that dies (killed, its host gone) loses the lock when the server closes
its session: at once for a process that exits, within the session's TCP keepalive (about 10 s) for a
host that vanished. A leader that loses its connection steps down before it tries again, so two
replicas never lead at once from the store's point of view. The API, telemetry ingest and deploys
run on every replica.
"""

from __future__ import annotations

import logging
import threading

__all__ = ["LEADER_LOCK", "AdvisoryLockLeader", "Leadership", "SoleLeader"]

log = logging.getLogger(__name__)

LEADER_LOCK = 0x65660010  # pg_advisory_lock key of the leading coordinator ("ef" 16)


class Leadership:
    """Whether this process leads now."""

    def is_leader(self) -> bool:
        raise NotImplementedError

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def describe(self) -> dict[str, object]:
        return {"leader": self.is_leader()}


class SoleLeader(Leadership):
    """The only coordinator of its store."""

    def is_leader(self) -> bool:
        return True

    def describe(self) -> dict[str, object]:
        return {"leader": True, "election": "none (one coordinator on its SQLite store)"}


class AdvisoryLockLeader(Leadership):
    def __init__(self, url: str, *, key: int = LEADER_LOCK, check_s: float = 1.0) -> None:
        self.url = url
        self.key = key
        self.check_s = check_s
        self._leading = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def is_leader(self) -> bool:
        return self._leading.is_set()

    def describe(self) -> dict[str, object]:
        return {"leader": self.is_leader(), "election": "PostgreSQL advisory lock"}

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="leader-election", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        import psycopg

        conn: psycopg.Connection | None = None
        while not self._stop.is_set():
            try:
                if conn is None:
                    conn = psycopg.connect(
                        self.url, autocommit=True, connect_timeout=5,
                        keepalives=1, keepalives_idle=5, keepalives_interval=2, keepalives_count=3,
                    )  # fmt: skip
                    # and the server's side of it: a vanished leader's session (and lock) ends within ~10 s
                    conn.execute("set tcp_keepalives_idle = 5")
                    conn.execute("set tcp_keepalives_interval = 2")
                    conn.execute("set tcp_keepalives_count = 3")
                if self.is_leader():
                    conn.execute("select 1")  # still our session, so still our lock
                else:
                    row = conn.execute("select pg_try_advisory_lock(%s)", [self.key]).fetchone()
                    if row is not None and row[0]:
                        self._change(True)
            except psycopg.Error as exc:
                if self.is_leader():
                    log.warning("leader election: lost the connection (%s); stepping down", _short(exc))
                    self._change(False)
                else:
                    log.debug("leader election: %s", _short(exc))
                if conn is not None:
                    conn.close()
                conn = None
            self._stop.wait(self.check_s)
        if conn is not None:
            conn.close()  # the lock goes with the session: another replica takes over at its next check
        if self.is_leader():
            self._change(False)

    def _change(self, leading: bool) -> None:
        if leading:
            self._leading.set()
        else:
            self._leading.clear()
        log.info("this coordinator %s the fleet-wide jobs", "now runs" if leading else "no longer runs")


def _short(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200]
