"""The coordinator's REST API (FastAPI): bundles, devices, deployments, telemetry, metrics."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from edgefleet.common.errors import ConfigError, EdgefleetError
from edgefleet.coordinator.api.alerts import alert_router
from edgefleet.coordinator.api.answers import Bundle, BundleDetail, Uploaded
from edgefleet.coordinator.api.artifacts import artifact_router
from edgefleet.coordinator.api.campaigns import campaign_router
from edgefleet.coordinator.api.dashboard import dashboard_files, dashboard_router
from edgefleet.coordinator.api.devices import device_router
from edgefleet.coordinator.api.docs import add_docs
from edgefleet.coordinator.api.registry import registry_router
from edgefleet.coordinator.api.rollouts import rollout_router
from edgefleet.coordinator.api.security import Security, security_router
from edgefleet.coordinator.errors import Conflict, NotFound, Rejected
from edgefleet.coordinator.health.metrics import fleet_registry
from edgefleet.coordinator.mqtt.signer import CommandNotSent
from edgefleet.coordinator.registry.refs import BundleRefs
from edgefleet.coordinator.security.broker_auth import BrokerAuthError
from edgefleet.coordinator.security.enrollment import EnrollmentRefused
from edgefleet.coordinator.security.tokens import Forbidden, Role, Unauthorized
from edgefleet.coordinator.service import Coordinator
from edgefleet.protocol.errors import ProtocolError

__all__ = ["create_app"]

MAX_UPLOAD_BYTES = 512 * 1024 * 1024


# Errors -> HTTP statuses, by class: the most specific class of an error listed here wins.
_STATUS: dict[type[EdgefleetError], int] = {
    NotFound: 404,
    Rejected: 422,
    Conflict: 409,
    Unauthorized: 401,
    EnrollmentRefused: 401,
    Forbidden: 403,
    BrokerAuthError: 502,
    CommandNotSent: 503,
    ProtocolError: 422,  # a bundle, manifest or message that breaks the contract
    ConfigError: 422,  # e.g. a campaign spec or device class that does not validate
}


def http_status(exc: EdgefleetError) -> int:
    """The status of the most specific listed class ``exc`` is an instance of; 400 for the rest."""
    return next((_STATUS[cls] for cls in type(exc).__mro__ if cls in _STATUS), 400)


def create_app(coordinator: Coordinator, *, token: str | None) -> FastAPI:
    """The REST API; ``token`` is the bootstrap admin token (None: the API is open)."""
    security = Security(coordinator, bootstrap_token=token)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        security.start()
        coordinator.start()
        try:
            yield
        finally:
            coordinator.stop()

    # /docs and /redoc are added with their assets served from here (add_docs): FastAPI's pages load a CDN.
    app = FastAPI(title="edgefleet coordinator", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.security = security
    add_docs(app)
    refs = BundleRefs(coordinator.db, coordinator.models)

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's own handler echoes each offending input, and a NaN or infinity there cannot be
        # rendered as JSON (a 500): say where and why, never what was sent.
        errors = [
            {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
            for e in exc.errors()
        ]
        return JSONResponse(status_code=422, content={"detail": errors})

    @app.exception_handler(EdgefleetError)
    async def _domain_error(_request: Request, exc: EdgefleetError) -> JSONResponse:
        status = http_status(exc)
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return JSONResponse(status_code=status, content={"detail": exc.reason}, headers=headers)

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        # Connected means both MQTT connections are subscribed: only then does nothing devices send go missing.
        # ``leader``: whether this replica runs the rollout engine and retention (always, on SQLite).
        connected = coordinator.link.subscribed.is_set()
        return {"ok": True, "broker_connected": connected, **coordinator.leadership.describe()}

    fleet_metrics = fleet_registry(coordinator)

    metrics_access = coordinator.config.api.metrics_access

    @app.get("/metrics")
    def metrics(request: Request) -> Response:
        """The process's counters (prometheus-client's registry) and this coordinator's fleet figures; who may
        read them is [api] metrics_access (default: a read-only token, or a client on loopback)."""
        local = request.client is not None and request.client.host in ("127.0.0.1", "::1")
        if metrics_access == "token" or (metrics_access == "token_or_loopback" and not local):
            security.auth.require(Role.READ_ONLY)(request)
        return Response(generate_latest() + generate_latest(fleet_metrics), media_type=CONTENT_TYPE_LATEST)

    # Reading needs a read-only token, anything else operator; admin routes say so themselves.
    api = Depends(security.auth.by_method)

    @app.post("/api/v1/bundles", status_code=201, dependencies=[api], response_model=Uploaded)
    async def upload_bundle(request: Request) -> dict[str, Any]:
        """Upload a signed bundle archive as the raw request body."""
        body = bytearray()
        async for part in request.stream():
            body += part
            if len(body) > MAX_UPLOAD_BYTES:
                raise Rejected(f"upload exceeds {MAX_UPLOAD_BYTES} bytes")
        # Extracting and hashing take a while for a large bundle: not on the event loop.
        digest, manifest = await run_in_threadpool(coordinator.registry.add_upload, bytes(body))
        return {
            "digest": digest,
            "name": manifest.name,
            "version": manifest.version,
            "device_class": manifest.device_class,
        }

    @app.get("/api/v1/bundles", dependencies=[api], response_model=list[Bundle])
    def list_bundles() -> list[dict[str, Any]]:
        return [{k: v for k, v in b.items() if k != "manifest"} for b in coordinator.db.bundles()]

    @app.get("/api/v1/bundles/{ref}", dependencies=[api], response_model=BundleDetail)
    def get_bundle(
        ref: str = Path(description="The bundle's digest, a unique prefix of it, or MODEL:VERSION."),
        device_class: str | None = Query(None, description="With MODEL:VERSION: the bundle of this device class."),
    ) -> dict[str, Any]:
        """One bundle with its manifest; MODEL:VERSION with bundles for several classes needs ``device_class``."""
        return refs.one(ref, device_class=device_class)

    app.include_router(device_router(coordinator, refs), dependencies=[api])
    app.include_router(rollout_router(coordinator.rollouts), dependencies=[api])
    public = coordinator.config.api.public_artifacts  # bytes by hash, verified by signature on the device
    app.include_router(artifact_router(coordinator.registry), dependencies=[] if public else [api])
    app.include_router(registry_router(coordinator.models), dependencies=[api])
    app.include_router(security_router(security))
    app.include_router(dashboard_router(coordinator.db), dependencies=[api])
    app.include_router(alert_router(coordinator.db, security.auth, coordinator.config.alerts))
    app.include_router(campaign_router(coordinator), dependencies=[api])
    app.mount("/dashboard", dashboard_files(), name="dashboard")
    return app
