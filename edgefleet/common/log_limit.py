"""Warnings about what one sender keeps doing wrong, at a bounded rate per sender.

An enrolled device that publishes garbage a thousand times a second must not fill the coordinator's
journal, nor hide every other device's warnings. ``PerSenderLog`` lets the first ``burst`` warnings of a
sender through in each ``window_s``, counts the rest, and says how many it held back the next time that
sender is let through again. It remembers at most ``max_senders`` senders (the least recently warned
about are forgotten first), so its memory is bounded as well.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["PerSenderLog"]


@dataclass
class _Window:
    started: float
    logged: int = 0
    held: int = 0


class PerSenderLog:
    def __init__(
        self, log: logging.Logger, *, burst: int = 5, window_s: float = 60.0, max_senders: int = 10_000,
        clock: Callable[[], float] = time.monotonic, on_held: Callable[[], None] = lambda: None,
    ) -> None:  # fmt: skip
        """``on_held`` is called for each warning held back (e.g. a metrics counter's inc)."""
        self.log, self.burst, self.window_s, self.max_senders, self.clock = log, burst, window_s, max_senders, clock
        self.on_held = on_held
        self.suppressed = 0  # warnings held back over the process's life, all senders together
        self._windows: OrderedDict[str, _Window] = OrderedDict()
        self._lock = threading.Lock()

    def warning(self, sender: str | None, msg: str, *args: object) -> bool:
        """Log ``msg % args`` unless ``sender`` used up its warnings for this window; True when it was logged."""
        key = sender or "?"
        now = self.clock()
        with self._lock:
            window = self._windows.pop(key, None)
            if window is None or now - window.started >= self.window_s:
                held = window.held if window is not None else 0
                window = _Window(started=now)
            else:
                held = 0
            self._windows[key] = window
            while len(self._windows) > self.max_senders:
                self._windows.popitem(last=False)
            if window.logged >= self.burst:
                window.held += 1
                self.suppressed += 1
                held_back = True
            else:
                window.logged += 1
                held_back = False
        if held_back:
            self.on_held()
            return False
        if held:
            self.log.warning(
                msg + " (and %d more from %s held back in the last %.0f s)", *args, held, key, self.window_s
            )
        else:
            self.log.warning(msg, *args)
        return True
