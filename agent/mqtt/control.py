"""The agent's gate for retained control state: desired states and campaign assignments.

With command keys configured (enrollment hands them out), a desired state or campaign assignment is
acted on only if a trusted command key signed it (protocol/control.py), it names this device, it has
not expired, and it is not older than what was already accepted: a desired state's revision never goes
below the highest one accepted, a campaign assignment never goes back to one sent earlier. Those floors
live in a small file in the data dir, so a restart does not reopen the door to a replayed message.
Without command keys (a hand-made config for a lab), unsigned control state is taken as before, and
the agent says once at start that it is not authenticated.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edgefleet.protocol.control import ControlKind, SignedControl, verify_signed_control
from edgefleet.protocol.errors import InvalidMessage, SignatureError
from edgefleet.protocol.messages import CampaignAssignment, DesiredState, parse
from edgefleet.protocol.signing import TrustedKeys

__all__ = ["FLOOR_FILE", "ControlVerifier"]

log = logging.getLogger(__name__)

FLOOR_FILE = "control-floor.json"  # in the data dir; enrollment against another coordinator removes it


def _utc_now() -> datetime:
    return datetime.now(UTC)


class ControlVerifier:
    """Checks the desired states and campaign assignments of one device; keeps their floors in ``floor_path``."""

    def __init__(
        self,
        device_id: str,
        trusted: TrustedKeys,
        floor_path: Path,
        *,
        max_skew_s: float = 300.0,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self.device_id = device_id
        self.trusted = trusted
        self.floor_path = floor_path
        self.max_skew_s = max_skew_s
        self.clock = clock
        self._lock = threading.Lock()
        self._floor = self._read_floor()
        if not trusted:
            log.warning(
                "no command keys (command_keys): desired state and campaign assignments are not authenticated; "
                "anyone who can publish on this device's topics chooses what it runs"
            )

    @property
    def desired_revision(self) -> int | None:
        """The highest desired-state revision accepted, here or before a restart."""
        value = self._floor.get("desired_revision")
        return value if isinstance(value, int) else None

    def desired(self, payload: bytes | bytearray, *, topic: str | None = None) -> DesiredState:
        message = self._open(payload, "desired", DesiredState, topic)
        assert isinstance(message, DesiredState)
        with self._lock:
            floor = self.desired_revision
            if self.trusted and floor is not None and message.revision < floor:
                raise InvalidMessage(
                    f"desired state revision {message.revision} is older than revision {floor}, already accepted "
                    "(a replay, or a coordinator whose store was reset: re-enroll the device)",
                    topic=topic,
                )
            if floor is None or message.revision > floor:
                self._save_floor(desired_revision=message.revision)
        return message

    def campaign(self, payload: bytes | bytearray, *, topic: str | None = None) -> CampaignAssignment:
        message = self._open(payload, "campaign", CampaignAssignment, topic)
        assert isinstance(message, CampaignAssignment)
        with self._lock:
            raw = self._floor.get("campaign_sent_at")
            floor = datetime.fromisoformat(raw) if isinstance(raw, str) else None
            if self.trusted and floor is not None and message.sent_at < floor:
                raise InvalidMessage(
                    f"campaign assignment sent at {message.sent_at.isoformat()} is older than one already accepted "
                    f"({floor.isoformat()}): a replay",
                    topic=topic,
                )
            if floor is None or message.sent_at > floor:
                self._save_floor(campaign_sent_at=message.sent_at.isoformat())
        return message

    def _open(
        self, payload: bytes | bytearray, kind: ControlKind, model: type[DesiredState] | type[CampaignAssignment],
        topic: str | None,
    ) -> DesiredState | CampaignAssignment:  # fmt: skip
        what = "desired state" if kind == "desired" else "campaign assignment"
        signed = _looks_signed(payload)
        if not signed:
            if self.trusted:
                raise SignatureError(f"unsigned {what} refused: this agent has command keys", topic=topic)
            message = parse(model, payload, topic=topic)
        else:
            if not self.trusted:
                raise SignatureError(f"signed {what} refused: no command keys configured (command_keys)", topic=topic)
            message = verify_signed_control(parse(SignedControl, payload, topic=topic), kind, self.trusted, topic=topic)
        if message.device_id != self.device_id:
            raise InvalidMessage(f"{what} names device {message.device_id!r}", topic=topic)
        if signed:
            now = self.clock()
            if message.expires_at is None:
                raise InvalidMessage(f"signed {what} without an expiry refused", topic=topic)
            if message.expires_at < now:
                raise InvalidMessage(
                    f"{what} expired at {message.expires_at.isoformat()} (device clock {now.isoformat()}); "
                    "waiting for a fresh one from the coordinator",
                    topic=topic,
                )
            if (message.sent_at - now).total_seconds() > self.max_skew_s:
                raise InvalidMessage(f"{what} was sent in the future; check the device clock", topic=topic)
        return message

    def _read_floor(self) -> dict[str, Any]:
        try:
            raw = json.loads(self.floor_path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            # Not fatal, and not silently forgotten: the coordinator's next message sets the floor again.
            log.error("%s unreadable (%s); the floor starts again from the next signed message", self.floor_path, exc)
            return {}
        return raw if isinstance(raw, dict) else {}

    def _save_floor(self, **values: Any) -> None:
        self._floor = {**self._floor, **values}
        self.floor_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.floor_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._floor))
        os.replace(tmp, self.floor_path)


def _looks_signed(payload: bytes | bytearray) -> bool:
    try:
        raw = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(raw, dict) and "signature" in raw
