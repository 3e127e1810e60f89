"""Which devices an operation is for: one selector for rollouts and campaigns alike."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from edgefleet.common.settings import StrictModel
from edgefleet.coordinator.store import FleetStore

__all__ = ["TargetSelector", "select_devices"]


class TargetSelector(StrictModel):
    """Every condition given must hold; none given means every device."""

    device_class: str | None = Field(default=None, description="Only this device class.")
    tag: str | None = Field(default=None, description="Only devices with this tag.")
    group: str | None = Field(default=None, description="Only devices in this group.")
    device_ids: list[str] | None = Field(default=None, max_length=10_000, description="Only these devices.")


def select_devices(store: FleetStore, target: TargetSelector) -> list[dict[str, Any]]:
    """The fleet's devices the target names, by device id."""
    devices = store.devices(target.device_class, tag=target.tag, group=target.group)
    if target.device_ids is None:
        return devices
    wanted = set(target.device_ids)
    return [d for d in devices if d["device_id"] in wanted]
