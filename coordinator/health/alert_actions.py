"""What operators say of alerts, laid over the alerts computed now: an acknowledgment (the alert stays listed,
marked with who, when and a note, until it clears) and a silence (alerts of a kind, for one device or for all,
left out until a time).

An alert is not stored, so "until it clears" is judged two ways. Every computation with the coordinator's own
thresholds (``GET /api/v1/alerts`` without overrides, the dashboard, each ``/metrics`` scrape) drops the
acknowledgments of alerts that no longer hold. And for the kinds whose ``since`` is when their condition began
(``_ONSET_KINDS``), an alert whose ``since`` is later than the one acknowledged is a new occurrence even when
no computation saw the gap: the device went offline again, a new run of drifting or full-disk reports, another
failed activation, the rollout halted again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from edgefleet.coordinator.config import AlertThresholds
from edgefleet.coordinator.errors import NotFound, Rejected
from edgefleet.coordinator.health.alerts import Alert, AlertKind, compute_alerts
from edgefleet.coordinator.store import FleetStore

__all__ = ["ALL_DEVICES", "AlertView", "acknowledge", "fleet_alerts", "silence", "stamp", "unsilence"]

log = logging.getLogger(__name__)

ALL_DEVICES = "*"  # a silence's device_id that matches every device, and fleet-level alerts
# Kinds whose ``since`` stays put while their condition lasts (the others' moves with their window).
_ONSET_KINDS = frozenset({"offline", "drift", "disk_full", "overheating", "activation_failed", "rollout_halted"})


def stamp(moment: datetime) -> str:
    """``moment`` as the store keeps times: UTC, always with microseconds, so that they compare as text."""
    aware = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return aware.astimezone(UTC).isoformat(timespec="microseconds")


@dataclass(frozen=True)
class AlertView:
    """An alert as the API shows it: with its acknowledgment, and the end of the silence that hides it."""

    alert: Alert
    acknowledged: dict[str, Any] | None = None  # by, at, note
    silenced_until: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return self.alert.to_dict() | {"acknowledged": self.acknowledged, "silenced_until": self.silenced_until}


def fleet_alerts(
    db: FleetStore, thresholds: AlertThresholds, *, configured: bool, now: datetime | None = None
) -> list[AlertView]:
    """Every alert that holds now with what operators said of it, silenced ones included (``silenced_until``
    set). ``configured``: ``thresholds`` are the coordinator's own, so an alert absent here has cleared and its
    acknowledgment is dropped; with other thresholds nothing is written."""
    now = now or datetime.now(UTC)
    started = stamp(datetime.now(UTC))
    alerts = compute_alerts(db, thresholds, now=now)
    held = {alert.key: alert for alert in alerts}
    current, cleared = {}, []
    for ack in db.alert_state.acknowledgments():
        key = (ack["kind"], ack["device_id"], ack["rollout_id"])
        alert = held.get(key)
        if alert is not None and not _new_occurrence(alert, ack):
            current[key] = ack
        elif ack["acked_at"] < started:  # one made while this computation ran may be of an alert it missed
            cleared.append(ack)
    if configured and cleared:
        dropped = db.alert_state.drop_acknowledgments(cleared)
        names = ", ".join("/".join(filter(None, (a["kind"], a["device_id"], a["rollout_id"]))) for a in cleared)
        log.info("dropped %d acknowledgment(s) of alerts that cleared: %s", dropped, names)
    silences = db.alert_state.silences(now=stamp(now))
    views = []
    for alert in alerts:
        mark = current.get(alert.key)
        ends = [s["until"] for s in silences if _silences(s, alert)]
        until = max(ends, default=None)
        acknowledged = {"by": mark["acked_by"], "at": mark["acked_at"], "note": mark["note"]} if mark else None
        views.append(AlertView(alert, acknowledged, until))
    return views


def acknowledge(
    db: FleetStore, thresholds: AlertThresholds, key: tuple[AlertKind, str, str], *, by: str, note: str | None
) -> AlertView:
    """Acknowledge the alert of ``key`` (kind, device id or "", rollout id or ""), which must hold now with the
    coordinator's thresholds; doing it again replaces the note and the time."""
    kind, device_id, rollout_id = key
    alert = next((a for a in compute_alerts(db, thresholds) if a.key == key), None)
    if alert is None:
        what = f"device {device_id}" if device_id else f"rollout {rollout_id}" if rollout_id else "the fleet"
        raise NotFound(f"no {kind} alert holds now for {what} (with the coordinator's [alerts] thresholds)")
    row = db.alert_state.acknowledge({
        "kind": kind, "device_id": device_id, "rollout_id": rollout_id, "since": alert.since, "acked_by": by,
        "acked_at": stamp(datetime.now(UTC)), "note": note,
    })  # fmt: skip
    log.info("alert %s/%s acknowledged by %s", kind, device_id or rollout_id or "fleet", by)
    return AlertView(alert, {"by": row["acked_by"], "at": row["acked_at"], "note": row["note"]})


def silence(
    db: FleetStore, kind: AlertKind, device_id: str | None, until: datetime, *, by: str, note: str | None
) -> dict[str, Any]:
    """Hide alerts of ``kind`` for ``device_id`` (None: every device, and the fleet-level ones) until ``until``;
    a silence of the same kind and device is replaced."""
    now = datetime.now(UTC)
    if (until if until.tzinfo else until.replace(tzinfo=UTC)) <= now:
        raise Rejected(f"a silence must end in the future; {stamp(until)} has passed")
    row = {
        "kind": kind, "device_id": device_id or ALL_DEVICES, "until": stamp(until), "silenced_by": by,
        "silenced_at": stamp(now), "note": note,
    }  # fmt: skip
    log.info("alerts %s of %s silenced until %s by %s", kind, device_id or "every device", row["until"], by)
    return db.alert_state.silence(row, now=stamp(now))


def unacknowledge(db: FleetStore, key: tuple[AlertKind, str, str]) -> None:
    """Take an acknowledgment back (kind, device id or "", rollout id or ""): the alert is unacknowledged again;
    NotFound if there is none."""
    rows = [
        row for row in db.alert_state.acknowledgments() if (row["kind"], row["device_id"], row["rollout_id"]) == key
    ]
    if not db.alert_state.drop_acknowledgments(rows):
        kind, device_id, rollout_id = key
        what = f"device {device_id}" if device_id else f"rollout {rollout_id}" if rollout_id else "the fleet"
        raise NotFound(f"no acknowledged {kind} alert for {what}")


def unsilence(db: FleetStore, kind: AlertKind, device_id: str | None) -> None:
    """Lift the silence of ``kind`` for ``device_id`` (None: the one of every device); NotFound if none."""
    if not db.alert_state.unsilence(kind, device_id or ALL_DEVICES):
        raise NotFound(f"no silence of {kind} alerts for {device_id or 'every device'}")


def _silences(row: dict[str, Any], alert: Alert) -> bool:
    return row["kind"] == alert.kind and row["device_id"] in (alert.device_id, ALL_DEVICES)


def _new_occurrence(alert: Alert, ack: dict[str, Any]) -> bool:
    """Whether the alert holding now began after the one acknowledged (it cleared and came back)."""
    if alert.kind not in _ONSET_KINDS or not alert.since or not ack["since"]:
        return False
    return _parse(alert.since) > _parse(ack["since"])


def _parse(ts: str) -> datetime:
    parsed = datetime.fromisoformat(ts)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
