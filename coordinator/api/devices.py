"""REST routes for devices: the fleet list, labels (tags and group), desired bundles, deployments, raw telemetry."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field, model_validator

from edgefleet.coordinator.api.answers import Device
from edgefleet.coordinator.errors import NotFound
from edgefleet.coordinator.registry.refs import BUNDLE_REF_PATTERN, DIGEST_PREFIX_PATTERN, BundleRefs

if TYPE_CHECKING:
    from edgefleet.coordinator.service import Coordinator

__all__ = ["DeploymentRequest", "DesiredRequest", "LabelsChange", "LabelsRequest", "device_router"]

_REF_DESCRIPTION = (
    "The bundle: its sha256, a unique prefix of it (8 hex digits at least, as tables print it), or MODEL:VERSION "
    "(VERSION may be production or staging; each device gets the version's bundle for its class)."
)
_DIGEST_DESCRIPTION = "The bundle's sha256 or a unique prefix of it; `bundle` takes MODEL:VERSION too."


class _BundleNamed(BaseModel):
    model_config = ConfigDict(extra="forbid")
    bundle: str | None = Field(default=None, pattern=BUNDLE_REF_PATTERN, description=_REF_DESCRIPTION)
    bundle_digest: str | None = Field(default=None, pattern=DIGEST_PREFIX_PATTERN, description=_DIGEST_DESCRIPTION)
    allow_downgrade: bool = Field(
        default=False, description="The devices may go below the min_version their active bundle declares."
    )

    @model_validator(mode="after")
    def _one_reference(self) -> _BundleNamed:
        if (self.bundle is None) == (self.bundle_digest is None):
            raise ValueError("give the bundle as `bundle` or as `bundle_digest`, not both or neither")
        return self

    @property
    def ref(self) -> str:
        return str(self.bundle or self.bundle_digest)


class DesiredRequest(_BundleNamed):
    pass


class DeploymentRequest(_BundleNamed):
    device_ids: list[str] | None = Field(
        default=None, max_length=10_000, description="Omit to target every device of the bundle's class."
    )


class LabelsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tags: list[str] | None = Field(default=None, max_length=64, description="The device's tags, replacing its own.")
    group: str | None = Field(default=None, max_length=128, description="Empty string removes the group.")


class LabelsChange(BaseModel):
    """Tags added and removed (the others kept), and optionally the group."""

    model_config = ConfigDict(extra="forbid")
    add_tags: list[str] = Field(default_factory=list, max_length=64, description="Tags to add.")
    remove_tags: list[str] = Field(default_factory=list, max_length=64, description="Tags to remove.")
    group: str | None = Field(
        default=None, max_length=128, description="The new group; empty string removes it; omitted: kept."
    )


class DeviceLabels(BaseModel):
    device_id: str
    device_class: str | None
    tags: list[str]
    group: str | None


class LabelCount(BaseModel):
    name: str
    devices: int = Field(description="Devices carrying it.")


class FleetLabels(BaseModel):
    tags: list[LabelCount]
    groups: list[LabelCount]
    devices: list[DeviceLabels]


class Deployed(BaseModel):
    device_id: str
    revision: int = Field(description="The device's desired-state revision now.")
    bundle_digest: str


def device_router(coordinator: Coordinator, refs: BundleRefs) -> APIRouter:
    router = APIRouter(prefix="/api/v1", tags=["devices"])
    db = coordinator.db

    def known(device_id: str) -> dict[str, Any]:
        device = db.device(device_id)
        if device is None:
            raise NotFound(f"no device {device_id!r}")
        return device

    @router.get("/devices", response_model=list[Device])
    def list_devices(
        device_class: str | None = None,
        tag: str | None = None,
        group: str | None = None,
        availability: str | None = None,
    ) -> list[dict[str, Any]]:
        """Devices with their reported and desired state, filtered by class, tag, group or availability."""
        return db.devices(device_class, tag=tag, group=group, availability=availability)

    @router.get("/labels", response_model=FleetLabels)
    def labels(device_class: str | None = None, tag: str | None = None, group: str | None = None) -> FleetLabels:
        """Every tag and group in use with how many devices carry it, and each device's labels."""
        devices = db.devices(device_class, tag=tag, group=group)
        tags = Counter(t for d in devices for t in d["tags"])
        groups = Counter(d["group"] for d in devices if d["group"])
        return FleetLabels(
            tags=[LabelCount(name=name, devices=n) for name, n in sorted(tags.items())],
            groups=[LabelCount(name=name, devices=n) for name, n in sorted(groups.items())],
            devices=[DeviceLabels.model_validate(d) for d in _labels_of(devices)],
        )

    @router.get("/devices/{device_id}/labels", response_model=DeviceLabels)
    def device_labels(device_id: str) -> DeviceLabels:
        return DeviceLabels.model_validate(_labels_of([known(device_id)])[0])

    @router.put("/devices/{device_id}/labels", response_model=Device)
    def label_device(device_id: str, body: LabelsRequest) -> dict[str, Any]:
        """Set a device's tags (replacing them) and/or group."""
        known(device_id)
        return db.label_device(device_id, tags=body.tags, group=body.group)

    @router.patch("/devices/{device_id}/labels", response_model=Device)
    def change_labels(device_id: str, body: LabelsChange) -> dict[str, Any]:
        """Add and remove tags, keeping the device's others, and optionally set or remove (``""``) its group."""
        # Read, change, write: two operators changing one device's tags at the same instant may lose one change.
        tags = (set(known(device_id)["tags"]) | set(body.add_tags)) - set(body.remove_tags)
        return db.label_device(device_id, tags=sorted(tags), group=body.group)

    @router.get("/devices/{device_id}", response_model=Device)
    def get_device(device_id: str) -> dict[str, Any]:
        return known(device_id)

    @router.put("/devices/{device_id}/desired", response_model=Deployed)
    def set_desired(device_id: str, body: DesiredRequest) -> dict[str, Any]:
        """Make a bundle the device's desired one (MODEL:VERSION: the version's bundle for its class)."""
        bundle = refs.one(body.ref, device_class=known(device_id).get("device_class") if body.bundle else None)
        return coordinator.deploy(bundle["digest"], [device_id], allow_downgrade=body.allow_downgrade)[0]

    @router.post("/deployments", response_model=list[Deployed])
    def deploy(body: DeploymentRequest) -> list[dict[str, Any]]:
        """Make a bundle the desired one for the devices named, or for every device of its class; MODEL:VERSION
        gives each device the version's bundle for its class."""
        plan = refs.plan(body.ref, body.device_ids)
        return [
            row
            for digest, device_ids in plan.items()
            for row in coordinator.deploy(digest, device_ids, allow_downgrade=body.allow_downgrade)
        ]

    @router.get("/devices/{device_id}/telemetry", tags=["telemetry"])
    def telemetry(device_id: str, limit: int = Query(100, ge=1, le=1000)) -> list[dict[str, Any]]:
        return db.telemetry(device_id, limit=min(limit, 1000))

    @router.get("/telemetry/latest", tags=["telemetry"])
    def latest_telemetry() -> list[dict[str, Any]]:
        """Every device's most recent figures in one read: when its latest window arrived, its drift alert,
        and the latest p95 latency, drift scores, device CPU and memory, temperature, disk and outbox."""
        return db.latest_telemetry()

    return router


def _labels_of(devices: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {"device_id": d["device_id"], "device_class": d.get("device_class"), "tags": d["tags"], "group": d["group"]}
        for d in devices
    ]
