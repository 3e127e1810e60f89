"""Campaign rows and their per-round records in the fleet database."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlite_utils.db import Table

from edgefleet.coordinator.errors import NotFound
from edgefleet.coordinator.store.sqlite import FleetDB

__all__ = ["FINAL_STATES", "CampaignStore", "TargetSelector"]

FINAL_STATES = frozenset({"completed", "aborted", "failed", "budget_exhausted"})
_JSON = ("spec", "target", "devices", "privacy", "evaluation")


class TargetSelector(BaseModel):
    """Which devices may take part; only online, ready devices with enough samples are picked."""

    model_config = ConfigDict(extra="forbid")

    device_class: str | None = Field(default=None, description="Only this device class.")
    tag: str | None = Field(default=None, description="Only devices with this tag.")
    group: str | None = Field(default=None, description="Only devices in this group.")
    device_ids: list[str] | None = Field(default=None, max_length=10_000, description="Only these devices.")


def _now() -> str:
    return datetime.now(UTC).isoformat()


class CampaignStore:
    def __init__(self, db: FleetDB) -> None:
        self.db = db

    def create(self, row: dict[str, Any]) -> dict[str, Any]:
        with self.db.locked() as db:
            Table(db, "campaigns").insert(_dump(row | {"created_at": _now(), "status": "created"}))
        return self.get(row["id"])

    def get(self, campaign_id: str) -> dict[str, Any]:
        with self.db.locked() as db:
            rows = list(Table(db, "campaigns").rows_where("id = ?", [campaign_id]))
        if not rows:
            raise NotFound(f"no campaign {campaign_id!r}")
        return _load(rows[0])

    def recent(self, limit: int = 100) -> list[dict[str, Any]]:
        with self.db.locked() as db:
            rows = list(Table(db, "campaigns").rows_where(order_by="created_at desc", limit=limit))
        return [_load(r) for r in rows]

    def update(self, campaign_id: str, **fields: Any) -> dict[str, Any]:
        with self.db.locked() as db:
            Table(db, "campaigns").update(campaign_id, _dump(fields))
        return self.get(campaign_id)

    def add_round(self, campaign_id: str, record: dict[str, Any]) -> None:
        with self.db.locked() as db:
            Table(db, "campaign_rounds").upsert(
                {"campaign_id": campaign_id, "round": record["round"], "status": record["status"],
                 "record": json.dumps(record), "at": _now()},
                pk=("campaign_id", "round"),
            )  # fmt: skip

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
        with self.db.locked() as db:
            rows = list(Table(db, "campaign_rounds").rows_where("campaign_id = ?", [campaign_id], order_by="round"))
        return [json.loads(r["record"]) for r in rows]

    def request_abort(self, campaign_id: str) -> None:
        self.update(campaign_id, abort_requested=1)

    def abort_requested(self, campaign_id: str) -> bool:
        return bool(self.get(campaign_id).get("abort_requested"))


def _dump(row: dict[str, Any]) -> dict[str, Any]:
    return {k: json.dumps(v) if k in _JSON and v is not None else v for k, v in row.items()}


def _load(row: dict[str, Any]) -> dict[str, Any]:
    return {k: json.loads(v) if k in _JSON and v is not None else v for k, v in row.items()}
