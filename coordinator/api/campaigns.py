"""REST routes for federated campaigns: create, start, progress, abort."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from edgefleet.coordinator.errors import Conflict
from edgefleet.coordinator.targets import TargetSelector
from edgefleet.federated.spec import CampaignSpec

if TYPE_CHECKING:
    from edgefleet.coordinator.campaigns.manager import CampaignManager
    from edgefleet.coordinator.service import Coordinator

__all__ = ["CampaignRequest", "campaign_router"]


class CampaignRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    spec: CampaignSpec
    target: TargetSelector = Field(default_factory=TargetSelector)
    start: bool = Field(default=False, description="Start right away.")


def campaign_router(coordinator: Coordinator) -> APIRouter:
    router = APIRouter(prefix="/api/v1/campaigns", tags=["campaigns"])

    def manager() -> CampaignManager:
        if coordinator.campaigns is None:
            raise Conflict(
                "federated campaigns need the federated extra on the coordinator: pip install edgefleet[federated]"
            )
        return coordinator.campaigns

    @router.post("", status_code=201)
    def create(body: CampaignRequest) -> dict[str, Any]:
        """Create a campaign (its base weights must load into its architecture); optionally start it."""
        row = manager().create(body.spec, body.target)
        return manager().start(row["id"]) if body.start else row

    @router.get("")
    def list_campaigns() -> list[dict[str, Any]]:
        return manager().recent()

    @router.get("/{campaign_id}")
    def status(campaign_id: str) -> dict[str, Any]:
        """The campaign with every finished round: participants, declines, metrics, privacy spent."""
        return manager().status(campaign_id)

    @router.post("/{campaign_id}/start")
    def start(campaign_id: str) -> dict[str, Any]:
        return manager().start(campaign_id)

    @router.post("/{campaign_id}/abort")
    def abort(campaign_id: str) -> dict[str, Any]:
        """Stop after the running round; an aborted campaign registers no model."""
        return manager().abort(campaign_id)

    return router
