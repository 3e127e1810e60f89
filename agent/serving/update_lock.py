"""The update lock: apps on the device hold it (with a TTL) to keep the agent from switching models."""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass

__all__ = ["LockHeld", "UpdateLock"]

MAX_TTL_S = 3600.0
MAX_HOLDERS = 64


@dataclass(frozen=True)
class LockHeld:
    lock_id: str
    holder: str
    expires_at: float  # time.monotonic()

    @property
    def remaining_s(self) -> float:
        return max(0.0, self.expires_at - time.monotonic())


class UpdateLock:
    """Several apps may hold it at once; activation waits until none does or every TTL has passed."""

    def __init__(self) -> None:
        self._holds: dict[str, LockHeld] = {}
        self._changed = threading.Condition()

    def acquire(self, holder: str, ttl_s: float) -> LockHeld:
        """Take a hold for ``ttl_s`` (at most an hour). Raises ValueError for a bad TTL or too many holds."""
        if not 0 < ttl_s <= MAX_TTL_S:
            raise ValueError(f"ttl_s must be in (0, {MAX_TTL_S:.0f}], got {ttl_s}")
        with self._changed:
            self._expire()
            if len(self._holds) >= MAX_HOLDERS:
                raise OverflowError(f"{MAX_HOLDERS} update locks are held already")
            hold = LockHeld(uuid.uuid4().hex, holder or "anonymous", time.monotonic() + ttl_s)
            self._holds[hold.lock_id] = hold
            return hold

    def release(self, lock_id: str) -> bool:
        with self._changed:
            released = self._holds.pop(lock_id, None) is not None
            self._changed.notify_all()
            return released

    def holds(self) -> list[LockHeld]:
        with self._changed:
            self._expire()
            return list(self._holds.values())

    def wait_free(self, stop: threading.Event, poll_s: float = 0.5) -> bool:
        """Block until no hold is active; False if ``stop`` was set first."""
        with self._changed:
            while not stop.is_set():
                self._expire()
                if not self._holds:
                    return True
                soonest = min(h.expires_at for h in self._holds.values()) - time.monotonic()
                self._changed.wait(timeout=max(0.01, min(poll_s, soonest)))
        return False

    def _expire(self) -> None:
        now = time.monotonic()
        for lock_id in [k for k, h in self._holds.items() if h.expires_at <= now]:
            del self._holds[lock_id]
