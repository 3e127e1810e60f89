"""REST routes the web dashboard reads (telemetry rollups; alerts are api/alerts.py's), and its static files at
/dashboard/."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Query
from fastapi.staticfiles import StaticFiles

from edgefleet.coordinator.api.answers import Rollup
from edgefleet.coordinator.store import FleetStore
from edgefleet.coordinator.telemetry.rollups import Resolution

__all__ = ["DASHBOARD_DIR", "MAX_ROLLUP_BUCKETS", "dashboard_files", "dashboard_router"]

DASHBOARD_DIR = Path(__file__).resolve().parent.parent / "dashboard"
MAX_ROLLUP_BUCKETS = 1440  # a day of minutes, two months of hours

_RESOLUTION = Query("minute", description="Bucket width: `minute` or `hour`.")
_SINCE = Query(None, description="ISO 8601 time; buckets from the one holding it on. Naive times are UTC.")
_LIMIT = Query(120, ge=1, le=MAX_ROLLUP_BUCKETS, description="Most buckets returned, newest first.")


def dashboard_router(db: FleetStore) -> APIRouter:
    router = APIRouter(prefix="/api/v1")

    @router.get("/devices/{device_id}/telemetry/rollups", tags=["telemetry"], response_model=list[Rollup])
    def device_rollups(
        device_id: str, resolution: Resolution = _RESOLUTION, since: datetime | None = _SINCE, limit: int = _LIMIT
    ) -> list[dict[str, Any]]:
        """A device's telemetry per minute or hour, newest first: reports, inferences, errors, error rate,
        errors by kind, mean latency (per inference), the bucket's latency histogram and its p50, p95 and p99
        (over every request, within a histogram bucket's 25%), mean CPU, the maxima of the windows' latency,
        p95, p99, RSS, temperature, drift, device CPU, memory and disk used percent, and the least free disk.

        E.g. ``?resolution=hour&since=2026-01-01T00:00:00Z&limit=48``. A device with no telemetry has no buckets.
        """
        return db.telemetry_rollups(device_id, resolution, since=since, limit=limit)

    @router.get("/telemetry/rollups", tags=["telemetry"], response_model=list[Rollup])
    def fleet_rollups(
        resolution: Resolution = _RESOLUTION,
        since: datetime | None = _SINCE,
        limit: int = _LIMIT,
        device_class: str | None = Query(None, max_length=128, description="Only the devices of this class."),
    ) -> list[dict[str, Any]]:
        """The same buckets summed over the fleet, or over one device class, with the number of devices reporting;
        error kinds and latency histograms are added up over the devices (so p50/p95/p99 are the fleet's),
        maxima and minima taken over them."""
        return db.fleet_rollups(resolution, device_class=device_class, since=since, limit=limit)

    return router


def dashboard_files() -> StaticFiles:
    """The dashboard's HTML, JS and CSS; public, since they hold no data (the page asks the API with a token)."""
    return StaticFiles(directory=DASHBOARD_DIR, html=True)
