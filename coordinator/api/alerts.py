"""REST routes of alerts: those that hold now, and an operator's acknowledgments and silences of them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field, model_validator

from edgefleet.coordinator.api.answers import Alert
from edgefleet.coordinator.health.alert_actions import acknowledge, fleet_alerts, silence, unacknowledge, unsilence
from edgefleet.coordinator.health.alerts import AlertKind, AlertThresholds
from edgefleet.coordinator.security.tokens import Authorizer, Principal, Role
from edgefleet.coordinator.store import FleetStore

__all__ = ["AckRequest", "Silence", "SilenceRequest", "alert_router"]

MAX_NOTE = 500
MAX_SILENCE_S = 366 * 86400


class Silence(BaseModel):
    model_config = ConfigDict(extra="allow")

    kind: str
    device_id: str = Field(description='The device silenced, or "*" for every device and the fleet-level alerts.')
    until: str
    silenced_by: str
    silenced_at: str
    note: str | None = None


class AckRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: AlertKind = Field(description="The alert's kind.")
    device_id: str = Field(default="", max_length=128, description='The alert\'s device; "" for a fleet-level one.')
    rollout_id: str | None = Field(default=None, max_length=128, description="A halted rollout's alert: its id.")
    note: str | None = Field(default=None, max_length=MAX_NOTE, description="What is being done about it.")


class SilenceRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: AlertKind = Field(description="The kind of alert to hide.")
    device_id: str | None = Field(
        default=None, min_length=1, max_length=128,
        description="Only this device's; default every device's and the fleet-level ones.",
    )  # fmt: skip
    until: datetime | None = Field(default=None, description="When the silence ends (ISO 8601; naive is UTC).")
    duration_s: float | None = Field(default=None, gt=0, le=MAX_SILENCE_S, allow_inf_nan=False,
                                     description="Or: how many seconds from now it lasts.")  # fmt: skip
    note: str | None = Field(default=None, max_length=MAX_NOTE, description="Why.")

    @model_validator(mode="after")
    def _one_end(self) -> SilenceRequest:
        if (self.until is None) == (self.duration_s is None):
            raise ValueError("give either until or duration_s")
        return self

    def ends(self) -> datetime:
        if self.until is not None:
            return self.until if self.until.tzinfo else self.until.replace(tzinfo=UTC)
        assert self.duration_s is not None
        return datetime.now(UTC) + timedelta(seconds=self.duration_s)


def alert_router(db: FleetStore, auth: Authorizer, alert_thresholds: AlertThresholds | None = None) -> APIRouter:
    """``alert_thresholds``: the coordinator's configured ones (its ``[alerts]`` table). Reading needs a read-only
    token; acknowledging and silencing an operator's."""
    router = APIRouter(prefix="/api/v1/alerts", tags=["alerts"])
    configured = alert_thresholds or AlertThresholds()
    reader = Depends(auth.require(Role.READ_ONLY))
    operator = Depends(auth.require(Role.OPERATOR))

    @router.get("", response_model=list[Alert], dependencies=[reader])
    def alerts(
        request: Request,
        _given: AlertThresholds = Depends(),
        include_silenced: bool = Query(False, description="List silenced alerts too (with silenced_until)."),
    ) -> list[dict[str, Any]]:
        """Alerts that hold now: offline devices, drift, error rate, p95 latency regression vs the previous bundle,
        a nearly full data disk, overheating, failed activations, halted rollouts; each with its acknowledgment
        (or null). Silenced alerts are left out unless ``include_silenced=true``.

        The thresholds are the coordinator's configured ones (its ``[alerts]`` table); each can be overridden
        per request, e.g. ``?offline_after_s=60&max_error_rate=0.01``.
        """
        # The dependency validated the parameters given; those not given keep the configured value.
        given = {name: value for name, value in request.query_params.items() if name in AlertThresholds.model_fields}
        thresholds = AlertThresholds.model_validate(configured.model_dump() | given)
        views = fleet_alerts(db, thresholds, configured=not given)
        return [v.to_dict() for v in views if include_silenced or v.silenced_until is None]

    @router.post("/acknowledgments", status_code=201, response_model=Alert)
    def acknowledge_alert(body: AckRequest, who: Principal = operator) -> dict[str, Any]:
        """Acknowledge an alert that holds now (with the configured thresholds; 404 if none): it stays listed,
        marked with the token's name, the time and the note, until it clears. Again: a new note and time."""
        key = (body.kind, body.device_id, body.rollout_id or "")
        return acknowledge(db, configured, key, by=who.name, note=body.note).to_dict()

    @router.delete("/acknowledgments/{kind}", dependencies=[operator])
    def take_back_acknowledgment(
        kind: AlertKind,
        device_id: str = Query("", max_length=128, description='The alert\'s device; "" for a fleet-level one.'),
        rollout_id: str = Query("", max_length=128, description="A halted rollout's alert: its id."),
    ) -> dict[str, Any]:
        """Take an acknowledgment back (404 if there is none): the alert counts as unacknowledged again."""
        unacknowledge(db, (kind, device_id, rollout_id))
        return {"kind": kind, "device_id": device_id, "rollout_id": rollout_id, "acknowledged": False}

    @router.get("/silences", response_model=list[Silence], dependencies=[reader])
    def silences() -> list[dict[str, Any]]:
        """The silences in force now."""
        return db.alert_state.silences(now=datetime.now(UTC).isoformat(timespec="microseconds"))

    @router.post("/silences", status_code=201, response_model=Silence)
    def silence_alerts(body: SilenceRequest, who: Principal = operator) -> dict[str, Any]:
        """Hide alerts of a kind, for one device or all, until a time (``until``) or for ``duration_s``; they are
        still counted by /metrics' ``edgefleet_fleet_alerts_silenced``. Again for the same kind and device: the
        new end replaces the old."""
        return silence(db, body.kind, body.device_id, body.ends(), by=who.name, note=body.note)

    @router.delete("/silences/{kind}", dependencies=[operator])
    def lift_silence(
        kind: AlertKind,
        device_id: str | None = Query(None, min_length=1, description="The device's silence; default every device's."),
    ) -> dict[str, Any]:
        """End a silence before its time (404 if there is none)."""
        unsilence(db, kind, device_id)
        return {"kind": kind, "device_id": device_id or "*", "lifted": True}

    return router
