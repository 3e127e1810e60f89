"""Fleet alerts computed from the store: offline devices, input or output confidence drift, error rate, latency
regression, full disks, an overheating SoC (against its device class's [thermal] limits).

Alerts are derived on request from devices and telemetry rather than stored, so they can never
disagree with the data they describe and need no clearing: an alert ends when its cause does. What
operators say of them (acknowledgments, silences) is stored and laid over them in alert_actions.py.
"""

from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from edgefleet.agent.device_class import load_device_class
from edgefleet.common.errors import ConfigError
from edgefleet.coordinator.config import AlertThresholds
from edgefleet.coordinator.health.signals import bundle_windows, latency_ratio
from edgefleet.coordinator.store import FleetStore

__all__ = ["Alert", "AlertKind", "AlertThresholds", "compute_alerts"]

Severity = Literal["critical", "warning"]
AlertKind = Literal[
    "offline",
    "drift",
    "error_rate",
    "latency_regression",
    "disk_full",
    "overheating",
    "activation_failed",
    "class_mismatch",
    "rollout_halted",
]
# What a device's last error says of a bundle it was given: it refused it, went back from it, or cannot serve it.
_ACTIVATION_FAILURES = ("refused", "reverted", "unusable")
_HALTED_SHOWN = 20  # the newest halted rollouts that alert


@dataclass(frozen=True)
class Alert:
    kind: AlertKind
    device_id: str  # "" for a fleet-level alert (a halted rollout)
    severity: Severity
    since: str | None  # ISO 8601, UTC: when the condition began, as far as the store knows
    detail: str
    rollout_id: str | None = None

    @property
    def key(self) -> tuple[str, str, str]:
        """What names this alert among those that hold: kind, device ("" for none), rollout ("" for none)."""
        return self.kind, self.device_id, self.rollout_id or ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _parse(ts: str | None) -> datetime | None:
    if not ts:
        return None
    parsed = datetime.fromisoformat(ts)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def compute_alerts(
    db: FleetStore, thresholds: AlertThresholds | None = None, *, now: datetime | None = None
) -> list[Alert]:
    """Every alert that holds now, critical first, then by device."""
    limits = thresholds or AlertThresholds()
    now = now or datetime.now(UTC)
    window_start = now - timedelta(seconds=limits.window_s)
    health = db.health
    devices = db.devices()
    latest = health.latest_windows()
    # Errors and requests of the reports received in the window, added up by the store (indexed by arrival).
    recent = health.window_totals(window_start.isoformat())
    alerts: list[Alert] = []
    for device in devices:
        device_id = device["device_id"]
        alerts += _offline(device, latest.get(device_id), limits, now)
        alerts += _drift(db, device_id, latest.get(device_id))
        alerts += _disk_full(db, device_id, latest.get(device_id), limits)
        alerts += _overheating(db, device, latest.get(device_id))
        alerts += _error_rate(device_id, recent.get(device_id), limits)
        alerts += _latency_regression(db, device, limits)
        alerts += _activation_failed(device)
        alerts += _class_mismatch(device)
    alerts += _halted_rollouts(db)
    return sorted(alerts, key=lambda a: (a.severity != "critical", a.device_id, a.kind))


def _activation_failed(device: dict[str, Any]) -> list[Alert]:
    """The device refused the bundle it was given, went back from it, or cannot serve the one it has."""
    error = (device.get("reported") or {}).get("last_error") or {}
    if error.get("kind") not in _ACTIVATION_FAILURES:
        return []
    bundle = f" (bundle {str(error['bundle_digest'])[:12]})" if error.get("bundle_digest") else ""
    detail = f"activation {error['kind']}{bundle}: {error.get('reason', '')}"
    return [Alert("activation_failed", device["device_id"], "critical", error.get("at"), detail)]


def _class_mismatch(device: dict[str, Any]) -> list[Alert]:
    if not device.get("problem"):
        return []
    return [Alert("class_mismatch", device["device_id"], "critical", device.get("problem_at"), device["problem"])]


def _halted_rollouts(db: FleetStore) -> list[Alert]:
    """A halted rollout waits for an operator (resume, rollback or abort): until then it is an alert."""
    alerts = []
    for rollout_id in db.rollouts.ids(status="halted")[:_HALTED_SHOWN]:
        rollout = db.rollouts.get(rollout_id) or {}
        what = f"{rollout.get('model')}:{rollout.get('version')}"
        detail = f"rollout {rollout_id} of {what} halted: {rollout.get('reason')}"
        alerts.append(Alert("rollout_halted", "", "critical", rollout.get("updated_at"), detail, rollout_id=rollout_id))
    return alerts


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


def _drift(db: FleetStore, device_id: str, latest: dict[str, Any] | None) -> list[Alert]:
    if latest is None or not latest.get("drift_alert"):
        return []
    # The alert began with the first row of the unbroken run of drifting rows that ends now.
    since = latest["received_at"]
    for row in db.health.recent_windows(device_id, ["drift_alert"], limit=1000):
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


def _disk_full(db: FleetStore, device_id: str, latest: dict[str, Any] | None, limits: AlertThresholds) -> list[Alert]:
    used = latest.get("disk_used_percent") if latest else None
    if latest is None or used is None or used <= limits.max_disk_used_percent:
        return []
    # The alert began with the first report of the unbroken run over the limit that ends now; a report
    # without the figure (an older agent) neither breaks nor extends the run.
    since = latest["received_at"]
    for row in db.health.recent_windows(device_id, ["disk_used_percent"], limit=1000, not_null="disk_used_percent"):
        if row["disk_used_percent"] <= limits.max_disk_used_percent:
            break
        since = row["received_at"]
    free = latest.get("disk_free_bytes")
    detail = f"data disk {used:.1f}% used (limit {limits.max_disk_used_percent:g}%)" + (
        f", {free / 2**20:.0f} MiB free" if free is not None else ""
    )
    return [Alert("disk_full", device_id, "warning", since, detail)]


@functools.cache
def _thermal_limits(device_class: str) -> tuple[float, float] | None:
    """(throttle_c, critical_c) of a shipped device class; None for a class this coordinator does not know."""
    try:
        limits = load_device_class(device_class).thermal
    except ConfigError:
        return None
    return limits.throttle_c, limits.critical_c


def _overheating(db: FleetStore, device: dict[str, Any], latest: dict[str, Any] | None) -> list[Alert]:
    """The newest window's SoC temperature at or over its class's limits: there the agent throttles (warning)
    or sheds load (critical, its requests answered UNAVAILABLE)."""
    celsius = latest.get("soc_temp_c") if latest else None
    limits = _thermal_limits(device.get("device_class") or "") if device.get("device_class") else None
    if latest is None or celsius is None or limits is None or celsius < limits[0]:
        return []
    throttle, critical = limits
    # Since the first report of the unbroken run at or over the throttle limit that ends now (an
    # acknowledgment holds while the run lasts); a report without a temperature neither breaks nor extends it.
    since = latest["received_at"]
    for row in db.health.recent_windows(device["device_id"], ["soc_temp_c"], limit=1000, not_null="soc_temp_c"):
        if row["soc_temp_c"] < throttle:
            break
        since = row["received_at"]
    if celsius >= critical:
        detail = f"SoC at {celsius:.1f} °C, at or over its class's critical {critical:g} °C: the agent sheds load"
        return [Alert("overheating", device["device_id"], "critical", since, detail)]
    detail = f"SoC at {celsius:.1f} °C, at or over its class's throttle {throttle:g} °C: federated training pauses"
    return [Alert("overheating", device["device_id"], "warning", since, detail)]


def _error_rate(device_id: str, recent: dict[str, Any] | None, limits: AlertThresholds) -> list[Alert]:
    errors, served = (recent["errors"], recent["served"]) if recent else (0, 0)
    if served < limits.min_requests or errors / served <= limits.max_error_rate:
        return []
    detail = (
        f"error rate {errors / served:.3f} ({errors} of {served} requests in {limits.window_s:.0f} s) "
        f"exceeds {limits.max_error_rate}"
    )
    return [Alert("error_rate", device_id, "critical", recent["since"] if recent else None, detail)]


def _latency_regression(db: FleetStore, device: dict[str, Any], limits: AlertThresholds) -> list[Alert]:
    active = device.get("active_digest")
    previous = ((device.get("reported") or {}).get("previous") or {}).get("digest")
    if not active or not previous or active == previous:
        return []
    device_id = device["device_id"]
    new, old = bundle_windows(db, [(device_id, active)]), bundle_windows(db, [(device_id, previous)])
    ratio = latency_ratio(new, old)
    if ratio is None or ratio <= limits.max_p95_latency_ratio:
        return []
    assert new.p95_ms is not None and old.p95_ms is not None
    detail = (
        f"p95 latency {new.p95_ms:.2f} ms on {device.get('active_version') or active[:12]} is {ratio:.2f}x "
        f"the previous bundle's {old.p95_ms:.2f} ms (limit {limits.max_p95_latency_ratio}x)"
    )
    return [Alert("latency_regression", device_id, "warning", new.first_at, detail)]
