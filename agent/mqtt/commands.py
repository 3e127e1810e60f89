"""The agent's gate for commands: signed by a trusted command key, meant for this device, fresh, not replayed.

``CommandVerifier.verify`` turns a payload from the commands topic into a ``Command`` or raises a
``ProtocolError`` whose ``reason`` says why it was refused; the MQTT link logs and counts those like
any other rejected message.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from edgefleet.protocol.commands import SignedCommand, verify_signed_command
from edgefleet.protocol.errors import InvalidMessage, SignatureError
from edgefleet.protocol.messages import Command, parse
from edgefleet.protocol.signing import TrustedKeys

__all__ = ["CommandVerifier"]

log = logging.getLogger(__name__)


def _utc_now() -> datetime:
    return datetime.now(UTC)


class CommandVerifier:
    """Checks commands for one device against its command keys.

    A command older than ``max_age_s`` or more than ``max_skew_s`` in the future is refused, and so
    is a command id seen before (kept for the last ``remember`` commands): a recorded command cannot
    be replayed later, nor to another device, whose id the signed command names. With a ``journal``
    file the ids seen within the freshness window survive a restart.
    """

    def __init__(
        self,
        device_id: str,
        trusted: TrustedKeys,
        *,
        max_age_s: float = 600.0,
        max_skew_s: float = 300.0,
        remember: int = 1024,
        clock: Callable[[], datetime] = _utc_now,
        journal: Path | None = None,
    ) -> None:
        if max_age_s <= 0 or max_skew_s < 0 or remember < 1:
            raise ValueError("max_age_s must be > 0, max_skew_s >= 0 and remember >= 1")
        self.device_id = device_id
        self.trusted = trusted
        self.max_age_s = max_age_s
        self.max_skew_s = max_skew_s
        self.remember = remember
        self.clock = clock
        self.journal = journal
        self._seen: OrderedDict[str, datetime] = OrderedDict()
        self._lock = threading.Lock()
        self._load_journal()

    def verify(self, payload: bytes | bytearray, *, topic: str | None = None) -> Command:
        """Return the command in ``payload``; raise SignatureError or InvalidMessage with the reason."""
        if not self.trusted:
            raise SignatureError("no command keys configured (command_keys): every command is refused", topic=topic)
        try:
            envelope = parse(SignedCommand, payload, topic=topic)
        except InvalidMessage:
            if _unsigned(payload):
                raise SignatureError("unsigned command refused: commands must be signed", topic=topic) from None
            raise
        command = verify_signed_command(envelope, self.trusted, topic=topic)
        if command.device_id != self.device_id:
            raise InvalidMessage(f"command {command.message_id} is for device {command.device_id!r}", topic=topic)
        age = (self.clock() - command.sent_at).total_seconds()
        if age > self.max_age_s:
            raise InvalidMessage(
                f"command {command.message_id} was sent {age:.0f}s ago (limit {self.max_age_s:.0f}s); "
                "if this repeats, check the device clock",
                topic=topic,
            )
        if age < -self.max_skew_s:
            raise InvalidMessage(
                f"command {command.message_id} was sent {-age:.0f}s in the future; check the device clock",
                topic=topic,
            )
        with self._lock:
            if command.message_id in self._seen:
                raise InvalidMessage(f"command {command.message_id} was already received (replay)", topic=topic)
            self._seen[command.message_id] = command.sent_at
            while len(self._seen) > self.remember:
                self._seen.popitem(last=False)
            self._save_journal()
        return command

    def _window_start(self) -> datetime:
        """Commands sent before this are refused by age: their ids need not be remembered."""
        return self.clock() - timedelta(seconds=self.max_age_s + self.max_skew_s)

    def _load_journal(self) -> None:
        if self.journal is None:
            return
        try:
            raw = json.loads(self.journal.read_text())
            entries = [(str(k), datetime.fromisoformat(v)) for k, v in raw.items()]
        except FileNotFoundError:
            return
        except (OSError, ValueError, AttributeError, TypeError) as exc:
            # Commands older than the freshness window are refused anyway; only younger ones could be replayed.
            log.error("%s unreadable (%s): commands sent in the last %.0fs could be replayed once",
                      self.journal, exc, self.max_age_s + self.max_skew_s)  # fmt: skip
            return
        start = self._window_start()
        self._seen.update((k, at) for k, at in sorted(entries, key=lambda e: e[1]) if at >= start)

    def _save_journal(self) -> None:
        if self.journal is None:
            return
        start = self._window_start()
        for message_id in [k for k, at in self._seen.items() if at < start]:
            del self._seen[message_id]
        self.journal.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.journal.with_suffix(".tmp")
        tmp.write_text(json.dumps({k: at.isoformat() for k, at in self._seen.items()}))
        os.replace(tmp, self.journal)


def _unsigned(payload: bytes | bytearray) -> bool:
    """A JSON object without the envelope's fields: a bare Command or anything else unsigned."""
    try:
        raw = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(raw, dict) and "signature" not in raw
