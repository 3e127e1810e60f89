"""The fleet's health signals, computed one way for alerts, rollout gates and /metrics alike.

"Is the new bundle slower than the previous one" is the median of the window p95s of each bundle
over its newest ``LATENCY_WINDOWS`` windows per device (bounded reads); both alerts and rollout
gates compare those medians against their own limit, ``DEFAULT_MAX_P95_RATIO`` unless configured.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from edgefleet.coordinator.store import FleetStore

__all__ = ["DEFAULT_MAX_P95_RATIO", "LATENCY_WINDOWS", "BundleWindows", "bundle_windows", "latency_ratio", "median"]

# At a window every 10 s, a bundle's first ~14 hours on a device.
LATENCY_WINDOWS = 5000
DEFAULT_MAX_P95_RATIO = 1.5  # the new bundle's p95 / the previous bundle's p95, above which it regressed


def median(values: Iterable[float]) -> float | None:
    ordered = sorted(values)
    return ordered[len(ordered) // 2] if ordered else None


@dataclass(frozen=True)
class BundleWindows:
    """What the newest windows of one bundle on some devices add up to."""

    windows: int
    inferences: int
    errors: int
    p95_ms: float | None  # the median of the windows' p95s; None without latency figures
    first_at: str | None  # when the oldest of these windows arrived

    @property
    def served(self) -> int:
        return self.inferences + self.errors

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.served if self.served else None


def bundle_windows(
    store: FleetStore, devices: Iterable[tuple[str, str | None]], *, since: str | None = None
) -> BundleWindows:
    """The newest ``LATENCY_WINDOWS`` windows of each (device, bundle digest) pair, received from ``since`` on."""
    inferences = errors = count = 0
    p95s: list[float] = []
    first: str | None = None
    for device_id, digest in devices:
        if digest is None:
            continue
        rows = store.health.recent_windows(
            device_id, ["inference_count", "error_count", "latency_ms_p95"], limit=LATENCY_WINDOWS,
            bundle_digest=digest, since=since,
        )  # fmt: skip
        for row in rows:
            count += 1
            inferences += row["inference_count"] or 0
            errors += row["error_count"] or 0
            if row["latency_ms_p95"] is not None:
                p95s.append(row["latency_ms_p95"])
            first = row["received_at"] if first is None or row["received_at"] < first else first
    return BundleWindows(count, inferences, errors, median(p95s), first)


def latency_ratio(new: BundleWindows, old: BundleWindows) -> float | None:
    """The new bundle's median p95 over the previous one's; None when either has no latency to judge."""
    if new.p95_ms is None or old.p95_ms is None or old.p95_ms <= 0:
        return None
    return new.p95_ms / old.p95_ms
