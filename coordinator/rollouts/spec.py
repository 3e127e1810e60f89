"""What a rollout may say: its target, waves, soak, and the gates each wave must pass."""

from __future__ import annotations

import itertools
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from edgefleet.coordinator.errors import Rejected
from edgefleet.coordinator.health.signals import DEFAULT_MAX_P95_RATIO
from edgefleet.coordinator.targets import TargetSelector

__all__ = ["DeviceState", "GateVerdict", "Gates", "RolloutSpec", "Status", "parse_waves", "validate_spec"]

Status = Literal["running", "paused", "halted", "aborted", "completed", "completed_with_skips", "rolled_back"]
GateVerdict = Literal["passed", "failed", "not_evaluated"]
DeviceState = Literal["pending", "assigned", "active", "failed", "rolled_back", "skipped"]


class Gates(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_failure_fraction: float = Field(default=0.0, ge=0, le=1, description="Activation failures tolerated.")
    max_error_rate: float = Field(
        default=0.05, ge=0, le=1, description="Inference errors / requests on the new bundle."
    )
    max_p95_latency_ratio: float = Field(
        default=DEFAULT_MAX_P95_RATIO, gt=0, description="New p95 latency / previous p95 (medians of their windows)."
    )
    min_inferences: int = Field(
        default=20, ge=0, description="Error-rate and latency gates apply once this many were served."
    )
    max_drift_alert_fraction: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Devices running the new bundle that may report a drift alert (inputs or output confidence) "
        "on it during the soak, as a fraction of them; more halts and rolls back. None: drift does not gate.",
    )
    min_reporting_devices: int = Field(
        default=1, ge=1, description="Devices on the new bundle that must have reported telemetry since the wave "
        "started for the telemetry gates to judge it (with min_inferences requests served among them)."
    )  # fmt: skip
    evidence_wait_s: float = Field(
        default=0.0, ge=0, le=7 * 86400, description="After the soak, how long a wave whose gates have nothing to "
        "judge waits for that evidence before without_evidence applies."
    )  # fmt: skip
    without_evidence: Literal["continue", "halt"] = Field(
        default="continue", description="A wave whose gates had nothing to judge once evidence_wait_s passed: "
        "continue (the wave is 'not evaluated' in the events and the final reason, never 'passed') or halt and "
        "roll back."
    )  # fmt: skip


class RolloutSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str
    version: str
    device_class: str | None = Field(default=None, description="Only devices of this class.")
    device_ids: list[str] | None = Field(default=None, description="Only these devices.")
    tag: str | None = Field(default=None, description="Only devices carrying this tag.")
    group: str | None = Field(default=None, description="Only devices in this group.")

    @property
    def target(self) -> TargetSelector:
        """The devices this rollout is for, as campaigns name them too."""
        return TargetSelector(
            device_class=self.device_class, tag=self.tag, group=self.group, device_ids=self.device_ids
        )

    waves: list[str] = Field(default=["10%", "50%", "100%"], description="Cumulative: '10%' or a device count.")
    soak_s: float = Field(default=60.0, ge=0, description="Wait after a wave is active, before gates are checked.")
    wave_timeout_s: float = Field(
        default=600.0, gt=0, description="Online devices not done by then (e.g. holding an update lock) are skipped."
    )
    gates: Gates = Field(default_factory=Gates)

    @field_validator("waves")
    @classmethod
    def _check_waves(cls, waves: list[str]) -> list[str]:
        parse_waves(waves, 100)
        return waves


def parse_waves(waves: list[str], devices: int) -> list[int]:
    """Cumulative device counts per wave; the last wave always covers every device."""
    if not waves:
        raise ValueError("at least one wave is needed")
    counts = []
    for wave in waves:
        text = wave.strip()
        try:
            if text.endswith("%"):
                share = float(text[:-1])
                if not 0 < share <= 100:
                    raise ValueError
                counts.append(max(1, -(-int(share * devices) // 100)))
            else:
                count = int(text)
                if count < 1:
                    raise ValueError
                counts.append(min(count, devices))
        except ValueError:
            raise ValueError(f"wave {wave!r}: use a percentage like '10%' or a device count like '5'") from None
    if any(b < a for a, b in itertools.pairwise(counts)):
        raise ValueError(f"waves must not shrink: {waves}")
    counts[-1] = devices
    return counts


def validate_spec(raw: dict[str, Any]) -> RolloutSpec:
    try:
        return RolloutSpec.model_validate(raw)
    except ValueError as exc:
        raise Rejected(str(exc)) from None
