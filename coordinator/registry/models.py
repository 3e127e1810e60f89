"""The model registry's view: models, versions, per-class bundles, stages and their history."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, Literal

from edgefleet.coordinator.errors import Conflict, NotFound
from edgefleet.coordinator.store import FleetStore

__all__ = ["STAGES", "ModelRegistry", "Stage"]

Stage = Literal["staging", "production", "archived"]
STAGES: tuple[Stage, ...] = ("staging", "production", "archived")


class ModelRegistry:
    def __init__(self, db: FleetStore) -> None:
        self.db = db

    def models(self) -> list[dict[str, Any]]:
        names = sorted({b["name"] for b in self.db.bundles()})
        return [self.model(name) for name in names]

    def model(self, name: str) -> dict[str, Any]:
        bundles = [b for b in self.db.bundles() if b["name"] == name]
        if not bundles:
            raise NotFound(f"no model {name!r}")
        stages = self._stages(name)
        versions: dict[str, dict[str, Any]] = {}
        for bundle in sorted(bundles, key=lambda b: b["uploaded_at"]):
            manifest = json.loads(bundle["manifest"])
            entry = versions.setdefault(
                bundle["version"],
                {
                    "version": bundle["version"],
                    "stage": stages.get(bundle["version"], "staging"),
                    "created_at": bundle["created_at"],
                    "lineage": manifest.get("lineage"),
                    "bundles": [],
                },
            )
            entry["bundles"].append(
                {
                    "device_class": bundle["device_class"],
                    "digest": bundle["digest"],
                    "size": bundle["size"],
                    "precision": manifest.get("precision"),
                    "recipe": manifest.get("recipe"),
                    "metrics": manifest.get("metrics", {}),
                }
            )
        production = [v for v, s in stages.items() if s == "production"]
        return {"model": name, "production": production[0] if production else None, "versions": list(versions.values())}

    def set_stage(self, name: str, version: str, stage: Stage) -> dict[str, Any]:
        """Move a version to a stage; promoting to production archives the version that held it."""
        if stage not in STAGES:
            raise Conflict(f"unknown stage {stage!r}; use one of {', '.join(STAGES)}")
        known = {v["version"] for v in self.model(name)["versions"]}
        if version not in known:
            raise NotFound(f"no version {version!r} of model {name!r}")
        self.db.stages.move(name, version, stage, at=datetime.now(UTC).isoformat())
        return self.model(name)

    def rollback_production(self, name: str) -> dict[str, Any]:
        """Make the version that was production before the current one production again."""
        current = self.model(name)["production"]
        if current is None:
            raise Conflict(f"model {name!r} has no production version")
        earlier = self.db.stages.earlier_production(name, current)
        if not earlier:
            raise Conflict(f"model {name!r} has no earlier production version to roll back to")
        return self.set_stage(name, earlier[0], "production")

    def resolve(self, name: str, version_or_stage: str) -> str:
        """``production`` or ``staging`` name the version in that stage; anything else is a version."""
        if version_or_stage not in ("production", "staging"):
            return version_or_stage
        matches = [v["version"] for v in self.model(name)["versions"] if v["stage"] == version_or_stage]
        if not matches:
            raise NotFound(f"model {name!r} has no {version_or_stage} version")
        return str(matches[-1])

    def history(self, name: str) -> list[dict[str, Any]]:
        return self.db.stages.history(name)

    def _stages(self, name: str) -> dict[str, str]:
        return self.db.stages.stages(name)
