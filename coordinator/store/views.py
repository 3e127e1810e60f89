"""What both backends do alike to rows on their way out: JSON columns decoded, flags as bools, names the API uses."""

from __future__ import annotations

import json
from typing import Any

__all__ = [
    "CAMPAIGN_JSON",
    "HEALTH_COLUMNS",
    "LATEST_FIGURES",
    "check_health_columns",
    "command_view",
    "device_view",
    "dump_campaign",
    "load_campaign",
]

# What the fleet overview shows of each device's recent telemetry.
LATEST_FIGURES = (
    "latency_ms_p95", "drift_score", "confidence_drift_score", "device_cpu_percent", "memory_used_percent",
    "soc_temp_c", "disk_used_percent", "outbox_pending",
)  # fmt: skip

# The telemetry columns the health reads may name (they go into SQL, so only these).
HEALTH_COLUMNS = frozenset(
    {"received_at", "bundle_digest", "latency_ms_p95", "drift_alert", "disk_used_percent", "inference_count",
     "error_count", "soc_temp_c"}
)  # fmt: skip

CAMPAIGN_JSON = ("spec", "target", "devices", "privacy", "evaluation")


def check_health_columns(*columns: str | None) -> None:
    unknown = {c for c in columns if c} - HEALTH_COLUMNS
    if unknown:
        raise ValueError(f"not a health column: {sorted(unknown)}")


def device_view(row: dict[str, Any], desired: dict[str, Any] | None) -> dict[str, Any]:
    """A devices row as ``FleetStore.devices`` gives it (changed in place)."""
    row["reported"] = json.loads(row["reported"]) if row.get("reported") else None
    row["tags"] = json.loads(row["tags"]) if row.get("tags") else []
    row["group"] = row.pop("group_name", None)
    row["desired"] = desired
    return row


def command_view(row: dict[str, Any]) -> dict[str, Any]:
    row["args"] = json.loads(row["args"]) if row.get("args") else {}
    row["ok"] = None if row["ok"] is None else bool(row["ok"])
    return row


def dump_campaign(row: dict[str, Any]) -> dict[str, Any]:
    return {k: json.dumps(v) if k in CAMPAIGN_JSON and v is not None else v for k, v in row.items()}


def load_campaign(row: dict[str, Any]) -> dict[str, Any]:
    return {k: json.loads(v) if k in CAMPAIGN_JSON and v is not None else v for k, v in row.items()}
