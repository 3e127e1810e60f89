"""Fleet alerts computed from the store: offline devices, input or output confidence drift, error rate, latency
regression, full disks.

Alerts are derived on request from devices and telemetry rather than stored, so they can never
disagree with the data they describe and need no clearing: an alert ends when its cause does.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from sqlite_utils.db import Table

from coordinator.db import FleetDB

__all__ = ["Alert", "AlertThresholds", "compute_alerts"]

Severity = Literal["critical", "warning"]
AlertKind = Literal["offline", "drift", "error_rate", "latency_regression", "disk_full"]
_YEAR_S = 365 * 86400.0  # bounds the windows so that "now - window" stays a valid date


class AlertThresholds(BaseModel):
    """When a device's state or telemetry becomes an alert."""

    model_config = ConfigDict(extra="forbid")

    offline_after_s: float = Field(
        default=300.0, gt=0, le=_YEAR_S, title="Staleness", description="An online device silent for longer is offline."
    )
    window_s: float = Field(
        default=900.0,
        gt=0,
        le=_YEAR_S,
        title="Recent window",
        description="Seconds of telemetry the error rate is taken over.",
    )
    max_error_rate: float = Field(
        default=0.05, ge=0, le=1, title="Error rate", description="Errors / (inferences + errors) in the window."
    )
    min_requests: int = Field(
        default=20, ge=1, title="Minimum requests", description="Fewer requests in the window raise no error alert."
    )
    max_p95_latency_ratio: float = Field(
        default=1.5, gt=0, title="Latency ratio", description="Active bundle's p95 / previous bundle's p95."
    )
    max_disk_used_percent: float = Field(
        default=90.0,
        ge=0,
        le=100,
        title="Disk usage",
        description="Used percent of the agent's data filesystem, in its latest report, above which the disk is full.",
    )


@dataclass(frozen=True)
class Alert:
    kind: AlertKind
    device_id: str
    severity: Severity
    since: str | None  # ISO 8601, UTC: when the condition began, as far as the store knows
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _parse(ts: str | None) -> datetime | None:
    if not ts:
        return None
    parsed = datetime.fromisoformat(ts)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _median(values: list[float]) -> float | None:
    values = sorted(values)
    return values[len(values) // 2] if values else None


def compute_alerts(
    db: FleetDB, thresholds: AlertThresholds | None = None, *, now: datetime | None = None
) -> list[Alert]:
    """Every alert that holds now, critical first, then by device."""
    limits = thresholds or AlertThresholds()
    now = now or datetime.now(UTC)
    window_start = (now - timedelta(seconds=limits.window_s)).isoformat()
    with db.locked() as conn:
        devices = list(Table(conn, "devices").rows_where(order_by="device_id"))
        latest = {
            row["device_id"]: row
            for row in conn.query(
                "select t.* from telemetry t join (select device_id, max(received_at) m from telemetry"
                " group by device_id) l on t.device_id = l.device_id and t.received_at = l.m"
            )
        }
        recent: dict[str, list[dict[str, Any]]] = {}
        for row in Table(conn, "telemetry").rows_where("received_at >= ?", [window_start], order_by="received_at"):
            recent.setdefault(row["device_id"], []).append(row)
        alerts: list[Alert] = []
        for device in devices:
            device_id = device["device_id"]
            alerts += _offline(device, latest.get(device_id), limits, now)
            alerts += _drift(conn, device_id, latest.get(device_id))
            alerts += _disk_full(conn, device_id, latest.get(device_id), limits)
            alerts += _error_rate(device_id, recent.get(device_id, []), limits)
            alerts += _latency_regression(conn, device, limits)
    return sorted(alerts, key=lambda a: (a.severity != "critical", a.device_id, a.kind))


def _offline(
    device: dict[str, Any], latest: dict[str, Any] | None, limits: AlertThresholds, now: datetime
) -> list[Alert]:
    device_id, availability = device["device_id"], device.get("availability")
    seen = [t for t in (_parse(device.get("last_seen")), _parse(latest["received_at"] if latest else None)) if t]
    last = max(seen) if seen else None
    since = last.isoformat() if last else None
    if availability in ("offline", "stopped"):
        how = "went offline (broker last will)" if availability == "offline" else "stopped cleanly"
        return [Alert("offline", device_id, "critical" if availability == "offline" else "warning", since, how)]
    if last is not None and (now - last).total_seconds() > limits.offline_after_s:
        silent = (now - last).total_seconds()
        detail = f"no message for {silent:.0f} s (staleness limit {limits.offline_after_s:.0f} s)"
        return [Alert("offline", device_id, "critical", since, detail)]
    return []


def _drift(conn: Any, device_id: str, latest: dict[str, Any] | None) -> list[Alert]:
    if latest is None or not latest.get("drift_alert"):
        return []
    # The alert began with the first row of the unbroken run of drifting rows that ends now.
    since = latest["received_at"]
    for row in Table(conn, "telemetry").rows_where(
        "device_id = ?", [device_id], order_by="received_at desc", select="received_at, drift_alert", limit=1000
    ):
        if not row["drift_alert"]:
            break
        since = row["received_at"]
    features = json.loads(latest["drift_features"]) if latest.get("drift_features") else {}
    top = ", ".join(f"{name} {psi:.2f}" for name, psi in sorted(features.items(), key=lambda kv: -kv[1])[:3])
    # Only the device knows its threshold: name the kind whose PSI is larger (the one that drifted, or the worse).
    scores = {
        kind: latest[column]
        for kind, column in (("the inputs", "drift_score"), ("output confidence", "confidence_drift_score"))
        if latest.get(column) is not None
    }
    ranked = sorted(scores.items(), key=lambda kv: -kv[1])
    detail = f"drift score {ranked[0][1]:.3f} in {ranked[0][0]}" if ranked else "drift alert"
    if len(ranked) > 1:
        detail += f" ({ranked[1][0]} {ranked[1][1]:.3f})"
    return [Alert("drift", device_id, "warning", since, detail + (f"; most drifted inputs: {top}" if top else ""))]


def _disk_full(conn: Any, device_id: str, latest: dict[str, Any] | None, limits: AlertThresholds) -> list[Alert]:
    used = latest.get("disk_used_percent") if latest else None
    if latest is None or used is None or used <= limits.max_disk_used_percent:
        return []
    # The alert began with the first report of the unbroken run over the limit that ends now; a report
    # without the figure (an older agent) neither breaks nor extends the run.
    since = latest["received_at"]
    for row in Table(conn, "telemetry").rows_where(
        "device_id = ? and disk_used_percent is not null",
        [device_id],
        order_by="received_at desc",
        select="received_at, disk_used_percent",
        limit=1000,
    ):
        if row["disk_used_percent"] <= limits.max_disk_used_percent:
            break
        since = row["received_at"]
    free = latest.get("disk_free_bytes")
    detail = f"data disk {used:.1f}% used (limit {limits.max_disk_used_percent:g}%)" + (
        f", {free / 2**20:.0f} MiB free" if free is not None else ""
    )
    return [Alert("disk_full", device_id, "warning", since, detail)]


def _error_rate(device_id: str, rows: list[dict[str, Any]], limits: AlertThresholds) -> list[Alert]:
    errors = sum(r["error_count"] or 0 for r in rows)
    served = errors + sum(r["inference_count"] or 0 for r in rows)
    if served < limits.min_requests or errors / served <= limits.max_error_rate:
        return []
    since = next(r["received_at"] for r in rows if r["error_count"])
    detail = (
        f"error rate {errors / served:.3f} ({errors} of {served} requests in {limits.window_s:.0f} s) "
        f"exceeds {limits.max_error_rate}"
    )
    return [Alert("error_rate", device_id, "critical", since, detail)]


def _latency_regression(conn: Any, device: dict[str, Any], limits: AlertThresholds) -> list[Alert]:
    active = device.get("active_digest")
    reported = json.loads(device["reported"]) if device.get("reported") else {}
    previous = (reported.get("previous") or {}).get("digest")
    if not active or not previous or active == previous:
        return []

    def p95s(digest: str) -> tuple[float | None, str | None]:
        rows = list(
            Table(conn, "telemetry").rows_where(
                "device_id = ? and bundle_digest = ? and latency_ms_p95 is not null",
                [device["device_id"], digest],
                order_by="received_at",
                select="received_at, latency_ms_p95",
            )
        )
        return _median([r["latency_ms_p95"] for r in rows]), (rows[0]["received_at"] if rows else None)

    new, since = p95s(active)
    old, _ = p95s(previous)
    if new is None or old is None or old <= 0 or new / old <= limits.max_p95_latency_ratio:
        return []
    detail = (
        f"p95 latency {new:.2f} ms on {device.get('active_version') or active[:12]} is {new / old:.2f}x "
        f"the previous bundle's {old:.2f} ms (limit {limits.max_p95_latency_ratio}x)"
    )
    return [Alert("latency_regression", device["device_id"], "warning", since, detail)]
