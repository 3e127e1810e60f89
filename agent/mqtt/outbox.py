"""The agent's durable outbox: what it must send survives outages and power loss and goes out at least once."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from edgefleet.agent.errors import AgentError
from edgefleet.protocol.messages import CommandResult, Message, ReportedState, Telemetry
from edgefleet.protocol.topics import Channel

__all__ = ["PRIORITY", "Outbox", "OutboxError", "OutboxItem", "OutboxStats"]

log = logging.getLogger(__name__)

# What may be queued, and how much it matters. A higher priority is delivered first and is never
# evicted to make room for a lower one. Availability and chunk requests are not queued: they only
# mean something while connected.
PRIORITY: dict[Channel, int] = {
    Channel.REPORTED: 2,
    Channel.COMMAND_RESULTS: 1,
    Channel.TELEMETRY: 0,
}
_MODEL: dict[Channel, type[Message]] = {
    Channel.REPORTED: ReportedState,
    Channel.COMMAND_RESULTS: CommandResult,
    Channel.TELEMETRY: Telemetry,
}

# AUTOINCREMENT, not a plain rowid: a plain rowid reuses the highest id once it is deleted, so a
# replaced reported state could get the id of the one in flight, and that one's ack would delete it.
_SCHEMA = """
BEGIN;
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id TEXT NOT NULL,
    channel TEXT NOT NULL,
    payload BLOB NOT NULL,
    priority INTEGER NOT NULL,
    size INTEGER NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_by_priority ON messages (priority, id);
CREATE TABLE IF NOT EXISTS dropped (
    channel TEXT PRIMARY KEY,
    count INTEGER NOT NULL
) WITHOUT ROWID;
PRAGMA user_version = 1;
COMMIT;
"""
_CORRUPTION = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})


class OutboxError(AgentError):
    """The outbox's storage failed (disk full, I/O error, closed); the message was not queued."""


class _Corrupt(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class OutboxItem:
    """One pending message; ``id`` is what ``Outbox.ack`` takes."""

    id: int
    message_id: str
    channel: Channel
    payload: bytes
    priority: int
    size: int
    created_at: datetime


@dataclass(frozen=True)
class OutboxStats:
    pending: int
    pending_bytes: int
    dropped: dict[Channel, int]  # every queueable channel, 0 when none was dropped


class Outbox:
    """Pending messages in a SQLite file, bounded in bytes and count, delivered by priority then FIFO.

    Delivery order (``pending``): reported state, then command results, then telemetry, each in the
    order it was put. Within a channel the order is strict FIFO; across channels the coordinator has
    no use for it (every message is ingested on its own, by message id), whereas after an outage the
    current state and the answers an operator waits for should not queue behind hours of telemetry.
    The same ranking decides what is evicted when the outbox is full.

    A superseded reported state is replaced, not counted as dropped.
    """

    def __init__(self, path: Path, *, max_bytes: int, max_messages: int) -> None:
        if max_bytes < 1 or max_messages < 1:
            raise ValueError(f"outbox bounds must be positive (max_bytes={max_bytes}, max_messages={max_messages})")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.max_messages = max_messages
        self.durable = True  # False when the file could not be used and messages live in memory
        # One connection behind one lock, shared by every thread: SQLite allows one writer at a time
        # anyway, so connections per thread would only add SQLITE_BUSY waits and an open (with its
        # PRAGMAs and WAL index mapping) per call; and the lock makes put's count-evict-insert one
        # step with respect to the other threads.
        self._lock = threading.Lock()
        self._db = self._open()

    # -- public API ----------------------------------------------------------------------
    def put(self, channel: Channel, message: Message) -> None:
        """Queue ``message`` durably (on return it survives a power loss), evicting to stay in bounds.

        Raises ValueError for a channel that is not queued or a message of the wrong type, and
        OutboxError when the storage fails.
        """
        if channel not in PRIORITY:
            queued = ", ".join(c.value for c in PRIORITY)
            raise ValueError(f"channel {channel.value!r} is not sent through the outbox (only {queued})")
        if not isinstance(message, _MODEL[channel]):
            raise ValueError(f"a {type(message).__name__} cannot go on channel {channel.value!r}")
        priority = PRIORITY[channel]
        payload = message.to_bytes()
        with self._transaction(write=True) as db:
            if channel is Channel.REPORTED:  # latest wins: only the newest state is worth sending
                db.execute("DELETE FROM messages WHERE channel = ?", (channel.value,))
            victims = self._make_room(db, priority, len(payload))
            if victims is None:
                self._count_dropped(db, Counter({channel.value: 1}))
            else:
                db.executemany("DELETE FROM messages WHERE id = ?", [(row_id,) for row_id, _ in victims])
                self._count_dropped(db, Counter(ch for _, ch in victims))
                db.execute(
                    "INSERT INTO messages (message_id, channel, payload, priority, size, created_at)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (message.message_id, channel.value, payload, priority, len(payload), time.time()),
                )
        if victims is None:
            log.warning(
                "outbox full: dropped new %s message %s (%d bytes); everything pending ranks higher",
                channel.value,
                message.message_id,
                len(payload),
            )
        elif victims:
            log.warning(
                "outbox full: evicted %s to queue %s message %s",
                ", ".join(f"{n} {ch}" for ch, n in sorted(Counter(ch for _, ch in victims).items())),
                channel.value,
                message.message_id,
            )

    def pending(self, limit: int) -> list[OutboxItem]:
        """Up to ``limit`` messages in delivery order (see the class docstring)."""
        with self._transaction() as db:
            rows = db.execute(
                "SELECT id, message_id, channel, payload, priority, size, created_at FROM messages"
                " ORDER BY priority DESC, id LIMIT ?",
                (limit,),
            ).fetchall()
        return [
            OutboxItem(row_id, message_id, Channel(channel), bytes(payload), priority, size, _datetime(created))
            for row_id, message_id, channel, payload, priority, size, created in rows
        ]

    def ack(self, ids: list[int]) -> None:
        """Forget delivered messages. Ids no longer pending (a replaced state) are ignored."""
        if not ids:
            return
        with self._transaction(write=True) as db:
            db.executemany("DELETE FROM messages WHERE id = ?", [(row_id,) for row_id in ids])

    def stats(self) -> OutboxStats:
        with self._transaction() as db:
            count, total = db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM messages").fetchone()
            dropped = dict(db.execute("SELECT channel, count FROM dropped").fetchall())
        return OutboxStats(
            pending=count,
            pending_bytes=total,
            dropped={channel: dropped.get(channel.value, 0) for channel in PRIORITY},
        )

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals -----------------------------------------------------------------------
    @contextmanager
    def _transaction(self, *, write: bool = False) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                # A writer takes the write lock up front (IMMEDIATE), so that another process on the
                # same file (a second agent by mistake) waits for the busy timeout, never deadlocks.
                self._db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                raise OutboxError(f"outbox {self.path}: {exc}") from exc

    def _make_room(self, db: sqlite3.Connection, priority: int, size: int) -> list[tuple[int, str]] | None:
        """Rows to evict (lowest priority, oldest first) so ``size`` more bytes fit; None if they cannot."""
        if size > self.max_bytes:
            return None
        count, total = db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM messages").fetchone()
        excess_rows = count + 1 - self.max_messages
        excess_bytes = total + size - self.max_bytes
        victims: list[tuple[int, str]] = []
        # Only rows that rank no higher than the newcomer may go; decide before deleting anything,
        # so a newcomer that cannot fit costs nothing pending.
        candidates = db.execute(
            "SELECT id, channel, size FROM messages WHERE priority <= ? ORDER BY priority, id", (priority,)
        )
        for row_id, channel, row_size in candidates:
            if excess_rows <= 0 and excess_bytes <= 0:
                break
            victims.append((row_id, channel))
            excess_rows -= 1
            excess_bytes -= row_size
        candidates.close()
        return victims if excess_rows <= 0 and excess_bytes <= 0 else None

    @staticmethod
    def _count_dropped(db: sqlite3.Connection, counts: Counter[str]) -> None:
        db.executemany(
            "INSERT INTO dropped (channel, count) VALUES (?, ?)"
            " ON CONFLICT (channel) DO UPDATE SET count = count + excluded.count",
            list(counts.items()),
        )

    def _open(self) -> sqlite3.Connection:
        """Open the file; a corrupt one is moved aside, and if the file cannot be used at all the
        outbox lives in memory: the agent must start whatever state its outbox is in."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return _connect(str(self.path))
        except _Corrupt as exc:
            reason = exc.reason
        except sqlite3.DatabaseError as exc:
            if getattr(exc, "sqlite_errorcode", 0) & 0xFF not in _CORRUPTION:
                return self._in_memory(str(exc))
            reason = str(exc)
        except OSError as exc:
            return self._in_memory(str(exc))
        try:
            aside = _move_aside(self.path)
            db = _connect(str(self.path))
        except (_Corrupt, sqlite3.Error, OSError) as exc:
            return self._in_memory(f"{reason}; then, moving it aside: {exc}")
        log.error("outbox %s is corrupt (%s); moved it to %s and started an empty outbox", self.path, reason, aside)
        return db

    def _in_memory(self, reason: str) -> sqlite3.Connection:
        log.error(
            "outbox %s cannot be used (%s); queueing in memory: pending messages will not survive a restart",
            self.path,
            reason,
        )
        self.durable = False
        return _connect(":memory:")


def _connect(target: str) -> sqlite3.Connection:
    # Autocommit mode: transactions are explicit (BEGIN IMMEDIATE ... COMMIT in _transaction).
    db = sqlite3.connect(target, timeout=5.0, isolation_level=None, check_same_thread=False)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        # FULL, not NORMAL: in WAL mode NORMAL survives a crashed process but may lose the last
        # commits on power loss, and a put that returned must not be lost; an edge device loses
        # power without warning. The price is one fsync per put or ack, and the outbox sees a few
        # messages a minute, not thousands a second.
        db.execute("PRAGMA synchronous=FULL")
        # Reads the whole file once per start; the file is bounded by max_bytes. A damaged page found
        # now costs one outbox; found later, it would fail every put.
        problems = [row[0] for row in db.execute("PRAGMA quick_check(5)").fetchall()]
        if problems != ["ok"]:
            raise _Corrupt("; ".join(problems))
        db.executescript(_SCHEMA)
    except BaseException:
        db.close()
        raise
    return db


def _move_aside(path: Path) -> Path:
    """Rename a corrupt database (and its WAL, which belongs to it) to ``<name>.corrupt-<timestamp>``."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while aside.exists():
        aside = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
        n += 1
    path.rename(aside)
    wal = path.with_name(path.name + "-wal")
    if wal.exists():  # replayed into a fresh database it would corrupt that one too
        wal.rename(aside.with_name(aside.name + "-wal"))
    path.with_name(path.name + "-shm").unlink(missing_ok=True)  # an index of the WAL, rebuilt on open
    return aside


def _datetime(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC)
