"""REST routes for rollouts: create, list, inspect, pause, resume, abort, roll back, events."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query

from edgefleet.coordinator.api.answers import Rollout, RolloutDetail, RolloutEvent
from edgefleet.coordinator.rollouts.engine import RolloutEngine
from edgefleet.coordinator.rollouts.spec import RolloutSpec

__all__ = ["rollout_router"]


def rollout_router(engine: RolloutEngine) -> APIRouter:
    router = APIRouter(prefix="/api/v1", tags=["rollouts"])

    @router.post("/rollouts", status_code=201, response_model=RolloutDetail)
    def create_rollout(body: RolloutSpec) -> dict[str, Any]:
        """Start a staged rollout of MODEL:VERSION (VERSION may be production or staging) to the devices the
        target selects; `gates` say what each wave must pass (max_drift_alert_fraction null: drift is not gated)."""
        return engine.create(body)

    @router.get("/rollouts", response_model=list[Rollout])
    def list_rollouts() -> list[dict[str, Any]]:
        return engine.overview()

    @router.get("/rollouts/{rollout_id}", response_model=RolloutDetail)
    def get_rollout(rollout_id: str) -> dict[str, Any]:
        return engine.get(rollout_id)

    @router.post("/rollouts/{rollout_id}/pause", response_model=RolloutDetail)
    def pause(rollout_id: str) -> dict[str, Any]:
        return engine.pause(rollout_id)

    @router.post("/rollouts/{rollout_id}/resume", response_model=RolloutDetail)
    def resume(rollout_id: str) -> dict[str, Any]:
        return engine.resume(rollout_id)

    @router.post("/rollouts/{rollout_id}/abort", response_model=RolloutDetail)
    def abort(rollout_id: str) -> dict[str, Any]:
        return engine.abort(rollout_id)

    @router.post("/rollouts/{rollout_id}/rollback", response_model=RolloutDetail)
    def rollback(rollout_id: str) -> dict[str, Any]:
        return engine.rollback(rollout_id)

    @router.get("/events", response_model=list[RolloutEvent])
    def events(rollout_id: str | None = None, limit: int = Query(200, ge=1, le=1000)) -> list[dict[str, Any]]:
        return engine.events(rollout_id, limit=min(limit, 1000))

    return router
