"""A wave's telemetry gates: passed, failed, or not evaluated for want of evidence, with what was measured."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from edgefleet.coordinator.health.signals import bundle_windows, latency_ratio
from edgefleet.coordinator.rollouts.spec import Gates, GateVerdict
from edgefleet.coordinator.store import FleetStore

__all__ = ["evaluate_gates"]


def evaluate_gates(
    store: FleetStore, members: list[dict[str, Any]], gates: Gates, since: float
) -> tuple[GateVerdict, str]:
    """The verdict of the telemetry gates on the devices running the new bundle, and what was measured
    (each figure beside its limit)."""
    active = [m for m in members if m["state"] == "active"]
    if not active:
        return "not_evaluated", "no device runs the new bundle"
    since_iso = datetime.fromtimestamp(since, UTC).isoformat()

    def windows_since(m: dict[str, Any], **kw: Any) -> list[dict[str, Any]]:
        return store.health.recent_windows(
            m["device_id"], ["drift_alert"], limit=1, bundle_digest=m["to_digest"], since=since_iso, **kw
        )

    drifting = {m["device_id"] for m in active if windows_since(m, only_true="drift_alert")}
    # Drift does not wait for min_inferences: an alert already summarises a window of inputs.
    if gates.max_drift_alert_fraction is not None and len(drifting) / len(active) > gates.max_drift_alert_fraction:
        names = ", ".join(sorted(drifting)[:5])
        return "failed", (
            f"drift alerts (inputs or output confidence) from {len(drifting)} of {len(active)} devices on the "
            f"new bundle ({names}) exceed the limit of {gates.max_drift_alert_fraction:.0%}"
        )
    reporting = sum(1 for m in active if windows_since(m))
    new = bundle_windows(store, [(m["device_id"], m["to_digest"]) for m in active], since=since_iso)
    evidence = (
        f"{reporting} of {len(active)} devices on the new bundle reported, {new.served} requests served "
        f"(the gates need {gates.min_reporting_devices} devices and {gates.min_inferences} requests)"
    )
    if reporting < gates.min_reporting_devices or new.served < gates.min_inferences:
        return "not_evaluated", evidence
    old = bundle_windows(store, [(m["device_id"], m["from_digest"]) for m in active])
    error_rate = new.errors / new.served
    measured = [f"error rate {error_rate:.3f} (limit {gates.max_error_rate}) over {new.served} requests"]
    if error_rate > gates.max_error_rate:
        return "failed", f"error rate {error_rate:.3f} on the new bundle exceeds {gates.max_error_rate}"
    ratio = latency_ratio(new, old)
    if ratio is not None and ratio > gates.max_p95_latency_ratio:
        return "failed", (
            f"p95 latency {new.p95_ms:.2f} ms is {ratio:.2f}x the previous "
            f"{old.p95_ms:.2f} ms (limit {gates.max_p95_latency_ratio}x)"
        )
    if ratio is None:
        measured.append("p95 latency not compared (no latency figures of both bundles)")
    else:
        measured.append(
            f"p95 {new.p95_ms:.2f} ms vs {old.p95_ms:.2f} ms = {ratio:.2f}x (limit {gates.max_p95_latency_ratio}x)"
        )
    measured.append(f"{len(drifting)} of {len(active)} devices with drift alerts")
    return "passed", "; ".join(measured) + f"; {reporting} of {len(active)} devices reported"
