"""REST routes for the model registry: models, versions, stages, promotion and production rollback."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict

from edgefleet.coordinator.registry.models import ModelRegistry, Stage

__all__ = ["registry_router"]


class StageRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    stage: Stage


def registry_router(registry: ModelRegistry) -> APIRouter:
    router = APIRouter(prefix="/api/v1/models", tags=["registry"])

    @router.get("")
    def list_models() -> list[dict[str, Any]]:
        return registry.models()

    @router.get("/{name}")
    def get_model(name: str) -> dict[str, Any]:
        return registry.model(name)

    @router.get("/{name}/history")
    def stage_history(name: str) -> list[dict[str, Any]]:
        return registry.history(name)

    @router.post("/{name}/versions/{version}/stage")
    def set_stage(name: str, version: str, body: StageRequest) -> dict[str, Any]:
        """Move a version to staging, production (archiving the one there) or archived."""
        return registry.set_stage(name, version, body.stage)

    @router.post("/{name}/rollback")
    def rollback(name: str) -> dict[str, Any]:
        """Make the previous production version production again."""
        return registry.rollback_production(name)

    return router
