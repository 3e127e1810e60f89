"""REST routes for the model registry: models, versions, stages, promotion and production rollback."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict

from edgefleet.coordinator.api.answers import Model, StageMove
from edgefleet.coordinator.registry.models import ModelRegistry, Stage

__all__ = ["registry_router"]


class StageRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    stage: Stage


def registry_router(registry: ModelRegistry) -> APIRouter:
    router = APIRouter(prefix="/api/v1/models", tags=["registry"])

    @router.get("", response_model=list[Model])
    def list_models() -> list[dict[str, Any]]:
        return registry.models()

    @router.get("/{name}", response_model=Model)
    def get_model(name: str) -> dict[str, Any]:
        return registry.model(name)

    @router.get("/{name}/history", response_model=list[StageMove])
    def stage_history(name: str) -> list[dict[str, Any]]:
        return registry.history(name)

    @router.post("/{name}/versions/{version}/stage", response_model=Model)
    def set_stage(name: str, version: str, body: StageRequest) -> dict[str, Any]:
        """Move a version to staging, production (archiving the one there) or archived; ``version`` may name
        a stage itself (``staging``: the newest version in staging), as in ``digits:staging``."""
        return registry.set_stage(name, registry.resolve(name, version), body.stage)

    @router.post("/{name}/rollback", response_model=Model)
    def rollback(name: str) -> dict[str, Any]:
        """Make the previous production version production again."""
        return registry.rollback_production(name)

    return router
