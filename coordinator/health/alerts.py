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

from sqlite_utils.db import Table

from edgefleet.coordinator.config import AlertThresholds
from edgefleet.coordinator.store.sqlite import FleetDB

__all__ = ["Alert", "AlertKind", "AlertThresholds", "compute_alerts"]

Severity = Literal["critical", "warning"]
AlertKind = Literal["offline", "drift", "error_rate", "latency_regression", "disk_full"]
# The latency comparison reads a device's most recent windows, of whichever bundle: a regression is judged
# while both bundles are among them (at a window every 10 s, the first ~14 hours after an update).
LATENCY_WINDOWS = 5000


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
    window_start = now - timedelta(seconds=limits.window_s)
    # Every read is bounded by an index: per device (its latest window, recent runs, its recent windows)
    # or by the window's arrivals, never by the size of the raw telemetry: the store is locked meanwhile.
    with db.locked() as conn:
        devices = list(Table(conn, "devices").rows_where(order_by="device_id"))
        latest = {
            row["device_id"]: row
            for row in conn.query(
                "select t.* from devices d join telemetry t on t.rowid = (select rowid from telemetry"
                " where device_id = d.device_id order by received_at desc limit 1)"
            )
        }
        # Errors and requests of the reports received in the window, added up by SQLite (indexed by arrival).
        recent = {
            row["device_id"]: row
            for row in conn.query(
                "select device_id, sum(error_count) as errors, sum(inference_count) + sum(error_count) as served,"
                " min(case when error_count > 0 then received_at end) as since"
                " from telemetry where received_at >= ? group by device_id",
                [window_start.isoformat()],
            )
        }
        alerts: list[Alert] = []
        for device in devices:
            device_id = device["device_id"]
            alerts += _offline(device, latest.get(device_id), limits, now)
            alerts += _drift(conn, device_id, latest.get(device_id))
            alerts += _disk_full(conn, device_id, latest.get(device_id), limits)
            alerts += _error_rate(device_id, recent.get(device_id), limits)
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


def _error_rate(device_id: str, recent: dict[str, Any] | None, limits: AlertThresholds) -> list[Alert]:
    errors, served = (recent["errors"], recent["served"]) if recent else (0, 0)
    if served < limits.min_requests or errors / served <= limits.max_error_rate:
        return []
    detail = (
        f"error rate {errors / served:.3f} ({errors} of {served} requests in {limits.window_s:.0f} s) "
        f"exceeds {limits.max_error_rate}"
    )
    return [Alert("error_rate", device_id, "critical", recent["since"] if recent else None, detail)]


def _latency_regression(conn: Any, device: dict[str, Any], limits: AlertThresholds) -> list[Alert]:
    active = device.get("active_digest")
    reported = json.loads(device["reported"]) if device.get("reported") else {}
    previous = (reported.get("previous") or {}).get("digest")
    if not active or not previous or active == previous:
        return []

    rows = list(
        Table(conn, "telemetry").rows_where(
            "device_id = ?", [device["device_id"]], order_by="received_at desc",
            select="received_at, bundle_digest, latency_ms_p95", limit=LATENCY_WINDOWS,
        )
    )  # fmt: skip

    def p95s(digest: str) -> tuple[float | None, str | None]:
        """The median p95 of the bundle's recent windows on this device, and the first of them."""
        mine = [r for r in rows if r["bundle_digest"] == digest and r["latency_ms_p95"] is not None]
        return _median([r["latency_ms_p95"] for r in mine]), (mine[-1]["received_at"] if mine else None)

    new, since = p95s(active)
    old, _ = p95s(previous)
    if new is None or old is None or old <= 0 or new / old <= limits.max_p95_latency_ratio:
        return []
    detail = (
        f"p95 latency {new:.2f} ms on {device.get('active_version') or active[:12]} is {new / old:.2f}x "
        f"the previous bundle's {old:.2f} ms (limit {limits.max_p95_latency_ratio}x)"
    )
    return [Alert("latency_regression", device["device_id"], "warning", since, detail)]
