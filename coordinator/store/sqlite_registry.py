"""Registry stages and federated campaigns in the SQLite store."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from sqlite_utils.db import Table

from edgefleet.coordinator.store.base import CampaignRepository, StageRepository
from edgefleet.coordinator.store.views import dump_campaign as _dump
from edgefleet.coordinator.store.views import load_campaign as _load

if TYPE_CHECKING:
    from edgefleet.coordinator.store.sqlite import SQLiteStore

__all__ = ["SQLiteCampaigns", "SQLiteStages"]


class SQLiteStages(StageRepository):
    def __init__(self, store: SQLiteStore) -> None:
        self.store = store

    def stages(self, model: str) -> dict[str, str]:
        with self.store.locked() as db:
            return {row["version"]: row["stage"] for row in Table(db, "stages").rows_where("model = ?", [model])}

    def move(self, model: str, version: str, stage: str, *, at: str) -> None:
        with self.store.locked() as db:
            stages = Table(db, "stages")
            if stage == "production":
                for row in list(stages.rows_where("model = ? and stage = ?", [model, "production"])):
                    if row["version"] != version:
                        stages.upsert({**row, "stage": "archived", "updated_at": at}, pk=("model", "version"))
                        _history(db, model, row["version"], "archived", "production", at)
            previous = next(stages.rows_where("model = ? and version = ?", [model, version]), None)
            stages.upsert(
                {"model": model, "version": version, "stage": stage, "updated_at": at}, pk=("model", "version")
            )
            _history(db, model, version, stage, previous["stage"] if previous else "staging", at)

    def history(self, model: str) -> list[dict[str, Any]]:
        with self.store.locked() as db:
            return list(Table(db, "stage_history").rows_where("model = ?", [model], order_by="id"))

    def earlier_production(self, model: str, current: str) -> list[str]:
        with self.store.locked() as db:
            return [
                row["version"]
                for row in Table(db, "stage_history").rows_where(
                    "model = ? and stage = ? and version != ?", [model, "production", current], order_by="id desc"
                )
            ]


def _history(db: Any, model: str, version: str, stage: str, previous: str, at: str) -> None:
    Table(db, "stage_history").insert(
        {"model": model, "version": version, "stage": stage, "previous": previous, "at": at}
    )


class SQLiteCampaigns(CampaignRepository):
    def __init__(self, store: SQLiteStore) -> None:
        self.store = store

    def create(self, row: dict[str, Any]) -> None:
        with self.store.locked() as db:
            Table(db, "campaigns").insert(_dump(row))

    def get(self, campaign_id: str) -> dict[str, Any] | None:
        with self.store.locked() as db:
            rows = list(Table(db, "campaigns").rows_where("id = ?", [campaign_id]))
        return _load(rows[0]) if rows else None

    def recent(self, limit: int) -> list[dict[str, Any]]:
        with self.store.locked() as db:
            rows = list(Table(db, "campaigns").rows_where(order_by="created_at desc", limit=limit))
        return [_load(r) for r in rows]

    def update(self, campaign_id: str, fields: dict[str, Any]) -> None:
        with self.store.locked() as db:
            Table(db, "campaigns").update(campaign_id, _dump(fields))

    def put_round(self, campaign_id: str, record: dict[str, Any], *, at: str) -> None:
        with self.store.locked() as db:
            Table(db, "campaign_rounds").upsert(
                {"campaign_id": campaign_id, "round": record["round"], "status": record["status"],
                 "record": json.dumps(record), "at": at},
                pk=("campaign_id", "round"),
            )  # fmt: skip

    def rounds(self, campaign_id: str) -> list[dict[str, Any]]:
        with self.store.locked() as db:
            rows = list(Table(db, "campaign_rounds").rows_where("campaign_id = ?", [campaign_id], order_by="round"))
        return [json.loads(r["record"]) for r in rows]
