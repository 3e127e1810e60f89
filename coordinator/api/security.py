"""The coordinator's security: enrollment, revocation, API tokens and signed commands, and their REST routes."""

from __future__ import annotations

import logging
from typing import Any

import paho.mqtt.client as mqtt
from fastapi import APIRouter, Depends, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from edgefleet.coordinator.errors import Conflict, NotFound, Rejected
from edgefleet.coordinator.mqtt.signer import publish_command
from edgefleet.coordinator.security.broker_auth import BrokerAuth, BrokerAuthError
from edgefleet.coordinator.security.enrollment import Enrollment
from edgefleet.coordinator.security.tokens import ApiTokens, Authorizer, Principal, Role
from edgefleet.coordinator.service import Coordinator
from edgefleet.protocol.enrollment import EnrollRequest, EnrollResponse
from edgefleet.protocol.messages import Availability
from edgefleet.protocol.topics import Channel, topic

__all__ = ["Security", "security_router"]

log = logging.getLogger(__name__)

MAX_TTL_S = 10 * 365 * 86400  # keeps expiry dates far inside datetime's range


class Security:
    """Enrollment, API tokens, the broker's auth files and the command key of one coordinator."""

    def __init__(self, coordinator: Coordinator, *, bootstrap_token: str | None) -> None:
        config = coordinator.config
        self.coordinator = coordinator
        self.tokens = ApiTokens(coordinator.db)
        self.auth = Authorizer(self.tokens, bootstrap_token)
        self.signer = coordinator.signer
        self.broker_auth = None
        if config.broker_auth is not None:
            password = config.broker.resolved_password()
            if not (config.broker.username and password):
                raise Rejected("broker_auth needs the coordinator's [broker] username and a non-empty password")
            self.broker_auth = BrokerAuth(config.broker_auth, username=config.broker.username, password=password)
        self.enrollment = Enrollment(
            coordinator.db,
            config,
            self.broker_auth,
            command_keys=[self.signer.public_pem] if self.signer else [],
        )

    def start(self) -> None:
        """Before the MQTT link connects: the broker must know the coordinator's own user."""
        if self.auth.open:
            log.warning("the REST API has no [api] token: anyone who reaches it is admin")
        if self.broker_auth is None:
            log.warning("no [broker_auth]: devices' broker credentials are not managed by the coordinator")
        try:
            self.enrollment.sync_broker()
        except BrokerAuthError as exc:
            # The files are the broker's to read when it (re)starts; enrollments will retry the reload.
            log.error("broker auth files not applied at start-up: %s", exc.reason)

    def revoke(self, device_id: str) -> dict[str, Any]:
        """Revoke the device's identity, then say for it that it is offline.

        Mosquitto 2.0 drops a client whose credentials are gone on reload but treats that like a clean
        disconnect: the device's last will is not published. The coordinator publishes the retained
        "offline" in its place, so the fleet view and later subscribers do not keep seeing "online".
        """
        identity = self.enrollment.revoke(device_id, known_device=self.coordinator.db.device(device_id))
        offline = Availability(device_id=device_id, state="offline")
        info = self.coordinator.link.client.publish(
            topic(device_id, Channel.AVAILABILITY), offline.to_bytes(), qos=1, retain=True
        )
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            log.warning(
                "revoked %s, but its offline availability was not sent: %s", device_id, mqtt.error_string(info.rc)
            )
        return identity

    def send_command(self, device_id: str, name: str, args: dict[str, Any]) -> dict[str, Any]:
        if self.signer is None:
            raise Conflict("the coordinator has no command_key: it cannot sign commands")
        if self.enrollment.is_revoked(device_id):
            raise Conflict(f"device {device_id!r} is revoked")
        known = self.coordinator.db.device(device_id) is not None
        if not known and device_id not in {i["device_id"] for i in self.enrollment.identities()}:
            raise NotFound(f"no device {device_id!r}")
        command, signed = self.signer.command(device_id, name, args)
        self.coordinator.db.record_command_sent(command)
        publish_command(self.coordinator.link.client, command, signed)
        return {"command_id": command.message_id, "device_id": device_id, "name": name, "key_id": signed.key_id}


class EnrollTokenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    device_class: str = Field(description="Device class of the device that will enroll.")
    device_id: str | None = Field(default=None, description="Fix the device id; default: chosen at enrollment.")
    ttl_s: float = Field(
        default=3600.0, gt=0, le=MAX_TTL_S, allow_inf_nan=False, description="Seconds until the token expires."
    )


class ApiTokenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Role
    name: str = Field(min_length=1, max_length=128, description="Who or what uses the token, e.g. ci.")
    ttl_s: float | None = Field(
        default=None, gt=0, le=MAX_TTL_S, allow_inf_nan=False, description="Seconds until it expires; default never."
    )


class CommandRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="A command the protocol knows, e.g. ping or report_state.")
    args: dict[str, Any] = Field(default_factory=dict)


def security_router(security: Security) -> APIRouter:
    """Routes with their own roles: enrollment needs no bearer token (the enrollment token is the secret)."""
    router = APIRouter(prefix="/api/v1", tags=["security"])
    admin = Depends(security.auth.require(Role.ADMIN))
    operator = Depends(security.auth.require(Role.OPERATOR))
    reader = Depends(security.auth.require(Role.READ_ONLY))

    @router.post("/enroll", response_model=EnrollResponse)
    def enroll(body: EnrollRequest, response: Response) -> EnrollResponse:
        """Spend a one-time enrollment token on a device identity with its own broker credentials."""
        response.headers["Cache-Control"] = "no-store"
        return security.enrollment.enroll(body.token, device_id=body.device_id)

    @router.post("/enroll-tokens", status_code=201)
    def create_enroll_token(body: EnrollTokenRequest, who: Principal = admin) -> dict[str, Any]:
        """Issue a one-time, expiring enrollment token; it is shown only in this answer."""
        return security.enrollment.issue_token(
            body.device_class, device_id=body.device_id, ttl_s=body.ttl_s, created_by=who.name
        )

    @router.get("/enroll-tokens", dependencies=[admin])
    def list_enroll_tokens() -> list[dict[str, Any]]:
        return security.enrollment.tokens()

    @router.get("/identities", dependencies=[reader])
    def list_identities() -> list[dict[str, Any]]:
        """Enrolled and revoked device identities."""
        return security.enrollment.identities()

    @router.delete("/devices/{device_id}", dependencies=[admin])
    def revoke_device(device_id: str) -> dict[str, Any]:
        """Revoke a device: its broker credentials are removed and the broker reloaded, which disconnects it."""
        return security.revoke(device_id)

    @router.post("/devices/{device_id}/commands", status_code=202, dependencies=[operator])
    def send_command(device_id: str, body: CommandRequest) -> dict[str, Any]:
        """Sign a command with the command key and publish it to the device."""
        return security.send_command(device_id, body.name, body.args)

    @router.get("/devices/{device_id}/commands", dependencies=[reader])
    def list_commands(device_id: str, limit: int = Query(100, ge=1, le=1000)) -> list[dict[str, Any]]:
        """Commands sent to a device, newest first, with their results once the device answered."""
        return security.coordinator.db.commands(device_id, limit=min(limit, 1000))

    @router.post("/tokens", status_code=201)
    def create_token(body: ApiTokenRequest, who: Principal = admin) -> dict[str, Any]:
        """Create an API token with a role; it is shown only in this answer."""
        return security.tokens.create(body.role, name=body.name, created_by=who.name, ttl_s=body.ttl_s)

    @router.get("/tokens", dependencies=[admin])
    def list_tokens() -> list[dict[str, Any]]:
        return security.tokens.list()

    @router.delete("/tokens/{token_id}", dependencies=[admin])
    def revoke_token(token_id: str) -> dict[str, Any]:
        return security.tokens.revoke(token_id)

    @router.get("/whoami")
    def whoami(who: Principal = reader) -> dict[str, Any]:
        """The name and role of the calling token."""
        return {"name": who.name, "role": who.role.value, "token_id": who.token_id}

    return router
