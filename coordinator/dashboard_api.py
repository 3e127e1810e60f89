"""REST routes for fleet alerts, and the static files of the web dashboard served at /dashboard/."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.staticfiles import StaticFiles

from coordinator.alerts import AlertThresholds, compute_alerts
from coordinator.db import FleetDB

__all__ = ["DASHBOARD_DIR", "dashboard_files", "dashboard_router"]

DASHBOARD_DIR = Path(__file__).with_name("dashboard")


def dashboard_router(db: FleetDB) -> APIRouter:
    router = APIRouter(prefix="/api/v1", tags=["alerts"])

    @router.get("/alerts")
    def alerts(thresholds: AlertThresholds = Depends()) -> list[dict[str, Any]]:
        """Alerts that hold now: offline devices, drift, error rate, p95 latency regression vs the previous bundle.

        Every threshold can be overridden per request, e.g. ``?offline_after_s=60&max_error_rate=0.01``.
        """
        return [alert.to_dict() for alert in compute_alerts(db, thresholds)]

    return router


def dashboard_files() -> StaticFiles:
    """The dashboard's HTML, JS and CSS; public, since they hold no data (the page asks the API with a token)."""
    return StaticFiles(directory=DASHBOARD_DIR, html=True)
