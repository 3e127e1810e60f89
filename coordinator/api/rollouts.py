"""REST routes for rollouts: create, list, inspect, pause, resume, abort, roll back, events."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Query

from edgefleet.coordinator.rollouts.engine import RolloutEngine
from edgefleet.coordinator.rollouts.spec import validate_spec

__all__ = ["rollout_router"]


def rollout_router(engine: RolloutEngine) -> APIRouter:
    router = APIRouter(prefix="/api/v1", tags=["rollouts"])

    @router.post("/rollouts", status_code=201)
    def create_rollout(body: dict[str, Any] = Body(...)) -> dict[str, Any]:
        """Start a staged rollout of MODEL:VERSION to the devices the target selects.

        The body is a RolloutSpec (coordinator/rollouts/spec.py); its `gates` hold max_failure_fraction,
        max_error_rate, max_p95_latency_ratio, min_inferences and max_drift_alert_fraction (null: off).
        """
        return engine.create(validate_spec(body))

    @router.get("/rollouts")
    def list_rollouts() -> list[dict[str, Any]]:
        return engine.overview()

    @router.get("/rollouts/{rollout_id}")
    def get_rollout(rollout_id: str) -> dict[str, Any]:
        return engine.get(rollout_id)

    @router.post("/rollouts/{rollout_id}/pause")
    def pause(rollout_id: str) -> dict[str, Any]:
        return engine.pause(rollout_id)

    @router.post("/rollouts/{rollout_id}/resume")
    def resume(rollout_id: str) -> dict[str, Any]:
        return engine.resume(rollout_id)

    @router.post("/rollouts/{rollout_id}/abort")
    def abort(rollout_id: str) -> dict[str, Any]:
        return engine.abort(rollout_id)

    @router.post("/rollouts/{rollout_id}/rollback")
    def rollback(rollout_id: str) -> dict[str, Any]:
        return engine.rollback(rollout_id)

    @router.get("/events")
    def events(rollout_id: str | None = None, limit: int = Query(200, ge=1, le=1000)) -> list[dict[str, Any]]:
        return engine.events(rollout_id, limit=min(limit, 1000))

    return router
