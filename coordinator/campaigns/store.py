"""Campaigns as the coordinator keeps them: rows and per-round records in the fleet store, and progress."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from edgefleet.coordinator.errors import NotFound
from edgefleet.coordinator.store import FleetStore

__all__ = ["FINAL_STATES", "CampaignStore"]

FINAL_STATES = frozenset({"completed", "aborted", "failed", "budget_exhausted"})


def _now() -> str:
    return datetime.now(UTC).isoformat()


class CampaignStore:
    def __init__(self, db: FleetStore) -> None:
        self.db = db

    def create(self, row: dict[str, Any]) -> dict[str, Any]:
        self.db.campaigns.create(row | {"created_at": _now(), "status": "created"})
        return self.get(row["id"])

    def get(self, campaign_id: str) -> dict[str, Any]:
        row = self.db.campaigns.get(campaign_id)
        if row is None:
            raise NotFound(f"no campaign {campaign_id!r}")
        return row

    def recent(self, limit: int = 100) -> list[dict[str, Any]]:
        return self.db.campaigns.recent(limit)

    def update(self, campaign_id: str, **fields: Any) -> dict[str, Any]:
        self.db.campaigns.update(campaign_id, fields)
        return self.get(campaign_id)

    def add_round(self, campaign_id: str, record: dict[str, Any]) -> None:
        self.db.campaigns.put_round(campaign_id, record, at=_now())

    def record_round(self, campaign_id: str, record: dict[str, Any]) -> None:
        """A finished round, and the campaign's progress: round, last evaluation, largest epsilon so far."""
        self.add_round(campaign_id, record)
        fields: dict[str, Any] = {"round": record["round"]}
        if record.get("evaluation"):
            fields["evaluation"] = record["evaluation"]
        epsilons = [p["epsilon"] for p in record.get("participants", []) if "epsilon" in p]
        if record.get("central_epsilon") is not None:
            epsilons.append(record["central_epsilon"])
        if epsilons:
            fields["epsilon"] = max([self.get(campaign_id).get("epsilon") or 0.0, *epsilons])
        self.update(campaign_id, **fields)

    def rounds(self, campaign_id: str) -> list[dict[str, Any]]:
        return self.db.campaigns.rounds(campaign_id)

    def request_abort(self, campaign_id: str) -> None:
        self.update(campaign_id, abort_requested=1)

    def abort_requested(self, campaign_id: str) -> bool:
        return bool(self.get(campaign_id).get("abort_requested"))
