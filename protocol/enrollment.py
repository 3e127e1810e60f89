"""The enrollment contract: ``POST /api/v1/enroll`` trades a one-time token for a device identity.

The agent sends ``EnrollRequest`` and reads ``EnrollResponse``; the coordinator validates the one
and builds the other. Responses ignore unknown fields, so an agent still enrolls with a newer
coordinator; requests forbid them.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["ENROLL_PATH", "EnrollRequest", "EnrollResponse", "EnrolledBroker"]

ENROLL_PATH = "/api/v1/enroll"


class EnrollRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    token: str = Field(min_length=8, max_length=256, description="The one-time enrollment token.")
    device_id: str | None = Field(
        default=None, description="Wished-for device id; used only if the token does not name one."
    )


class EnrolledBroker(BaseModel):
    model_config = ConfigDict(extra="ignore")

    url: str = Field(description="Broker URL the device connects to.")
    username: str = Field(description="The device's broker username (its device id).")
    password: str | None = Field(default=None, description="Its broker password; none where auth is unmanaged.")
    ca_pem: str | None = Field(default=None, description="CA certificate (PEM) for the broker's TLS certificate.")
    managed: bool = Field(description="Whether the coordinator maintains the broker's password and ACL files.")


class EnrollResponse(BaseModel):
    model_config = ConfigDict(extra="ignore")

    device_id: str
    device_class: str
    broker: EnrolledBroker
    trusted_keys: list[str] = Field(min_length=1, description="PEM public keys that sign bundles.")
    command_keys: list[str] = Field(default_factory=list, description="PEM public keys that sign commands.")
    notes: list[str] = Field(default_factory=list, description="What the operator should know, e.g. unmanaged auth.")
