"""What the main REST routes answer, as pydantic models: the OpenAPI names every field a client reads.

Each model allows fields it does not list (``extra="allow"``): a field the store adds later reaches clients
before it is described here, and no answer is ever cut down to what this file knows. Fields that a row may
lack are optional, since an answer that fails its own model would be a server error.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from edgefleet.coordinator.registry.models import Stage
from edgefleet.coordinator.rollouts.spec import DeviceState, Status

__all__ = [
    "Acknowledgment",
    "Alert",
    "Bundle",
    "BundleDetail",
    "Device",
    "Model",
    "ModelBundle",
    "ModelVersion",
    "Rollout",
    "RolloutDetail",
    "RolloutDevice",
    "RolloutEvent",
    "Rollup",
    "StageMove",
    "Uploaded",
]


class _Answer(BaseModel):
    model_config = ConfigDict(extra="allow")


class Uploaded(_Answer):
    digest: str = Field(description="sha256 of the signed manifest: the bundle's id.")
    name: str
    version: str
    device_class: str


class Bundle(_Answer):
    digest: str
    name: str
    version: str
    device_class: str
    model_format: str | None = None
    key_id: str | None = Field(default=None, description="The signing key's id.")
    size: int | None = Field(default=None, description="Bytes of the bundle's files.")
    created_at: str | None = None
    uploaded_at: str | None = None
    parent: str | None = Field(default=None, description="Digest of the bundle this one derives from.")


class BundleDetail(Bundle):
    manifest: str = Field(description="The signed manifest's exact text (JSON).")


class Device(_Answer):
    device_id: str
    device_class: str | None = None
    availability: str | None = Field(default=None, description="online or offline, from the device's last will.")
    last_seen: str | None = None
    status: str | None = Field(default=None, description="The agent's reported status.")
    active_digest: str | None = None
    active_version: str | None = None
    runtime: str | None = None
    last_error: Any = None
    tags: list[str] = Field(default_factory=list)
    group: str | None = None
    reported: dict[str, Any] | None = Field(default=None, description="The device's last reported state.")
    desired: dict[str, Any] | None = Field(default=None, description="Its desired bundle and revision.")


class RolloutDevice(_Answer):
    rollout_id: str
    device_id: str
    wave: int | None = None
    from_digest: str | None = None
    to_digest: str | None = None
    state: DeviceState
    assigned_at: float | None = None
    detail: str | None = None


class Rollout(_Answer):
    id: str
    model: str
    version: str
    status: Status
    wave: int = Field(description="Index of the current wave.")
    waves: list[int] = Field(description="Cumulative device counts per wave.")
    reason: str | None = None
    created_at: str | None = None
    updated_at: str | None = None
    devices: dict[str, int] = Field(description="Devices per state (pending, assigned, active, failed, ...).")


class RolloutDetail(Rollout):
    device_states: list[RolloutDevice]


class RolloutEvent(_Answer):
    id: int | None = None
    at: str
    kind: str
    rollout_id: str | None = None
    device_id: str | None = None
    detail: str | None = None


class ModelBundle(_Answer):
    device_class: str
    digest: str
    size: int | None = None
    precision: str | None = None
    recipe: Any = None
    metrics: dict[str, Any] = Field(default_factory=dict)


class ModelVersion(_Answer):
    version: str
    stage: Stage
    created_at: str | None = None
    lineage: Any = None
    bundles: list[ModelBundle]


class Model(_Answer):
    model: str
    production: str | None = Field(description="The version in production, if any.")
    versions: list[ModelVersion]


class StageMove(_Answer):
    model: str
    version: str
    stage: str
    previous: str | None = Field(default=None, description="The stage the version left.")
    at: str | None = None


class Acknowledgment(_Answer):
    by: str = Field(description="The name of the token that acknowledged the alert.")
    at: str = Field(description="When (ISO 8601, UTC).")
    note: str | None = None


class Alert(_Answer):
    kind: str
    device_id: str = Field(description='"" for a fleet-level alert (a halted rollout).')
    severity: str = Field(description="critical or warning.")
    since: str | None = None
    detail: str
    rollout_id: str | None = None
    acknowledged: Acknowledgment | None = Field(
        default=None, description="Who acknowledged the alert, when, with what note; null until someone does, and "
        "again once it has cleared and come back."
    )  # fmt: skip
    silenced_until: str | None = Field(
        default=None, description="The end of the silence that hides it (listed only with include_silenced=true)."
    )


class Rollup(_Answer):
    bucket_start: str
    reports: int | None = None
    inference_count: int | None = None
    error_count: int | None = None
    error_rate: float | None = None
    latency_ms_mean: float | None = None
    latency_ms_p50: float | None = None
    latency_ms_p95: float | None = None
    latency_ms_p99: float | None = None
    devices: int | None = Field(default=None, description="Fleet buckets: the devices that reported in it.")
