"""Signed control state: desired states and campaign assignments as the coordinator signs them.

A retained desired state or campaign assignment decides what a device runs, so whoever can write a
device's topic must not be able to choose it. The coordinator signs the exact JSON text with its
command key (the key that signs commands), under a context string of its own per kind; the message
names the device and carries an expiry, and a desired state's revision only grows. The agent checks
all of it (agent/mqtt/control.py) and keeps the highest revision it accepted across restarts: the
TUF/Uptane idea of signed, fresh, non-rollback metadata, with one key.
"""

from __future__ import annotations

import base64
from typing import Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgefleet.protocol.commands import check_envelope_signature
from edgefleet.protocol.errors import InvalidMessage
from edgefleet.protocol.messages import MAX_CONTROL_BYTES, CampaignAssignment, DesiredState, parse
from edgefleet.protocol.signing import TrustedKeys, key_id

__all__ = [
    "CONTROL_CONTEXTS",
    "ControlKind",
    "SignedControl",
    "read_unverified",
    "sign_control",
    "verify_signed_control",
]

ControlKind = Literal["desired", "campaign"]
CONTROL_CONTEXTS: dict[ControlKind, bytes] = {
    "desired": b"edgefleet/v1 desired state\n",
    "campaign": b"edgefleet/v1 campaign assignment\n",
}
_MODELS: dict[ControlKind, type[DesiredState] | type[CampaignAssignment]] = {
    "desired": DesiredState,
    "campaign": CampaignAssignment,
}


class SignedControl(BaseModel):
    """A DesiredState or CampaignAssignment as the exact JSON text that was signed, with the key id and signature."""

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = 1
    kind: ControlKind
    body: str = Field(max_length=MAX_CONTROL_BYTES, description="The message's JSON text, exactly as signed.")
    key_id: str = Field(pattern=r"^[0-9a-f]{16}$", description="Id of the command key that signed it.")
    signature: str = Field(max_length=128, description="base64 ed25519 signature over the kind's context + body.")

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()


def sign_control(message: DesiredState | CampaignAssignment, private_key: Ed25519PrivateKey) -> SignedControl:
    kind: ControlKind = "desired" if isinstance(message, DesiredState) else "campaign"
    text = message.model_dump_json()
    return SignedControl(
        kind=kind,
        body=text,
        key_id=key_id(private_key.public_key()),
        signature=base64.b64encode(private_key.sign(CONTROL_CONTEXTS[kind] + text.encode())).decode("ascii"),
    )


def verify_signed_control(
    signed: SignedControl, kind: ControlKind, trusted: TrustedKeys, *, topic: str | None = None
) -> DesiredState | CampaignAssignment:
    """The message ``signed`` covers, if it is of ``kind`` and a trusted command key signed it.

    Raises SignatureError (unknown key, bad signature) or InvalidMessage (another kind, malformed body).
    Whom it names and whether it is fresh are the receiver's checks.
    """
    what = "desired state" if kind == "desired" else "campaign assignment"
    if signed.kind != kind:
        raise InvalidMessage(f"a signed {signed.kind} message where a {what} belongs", topic=topic)
    check_envelope_signature(
        CONTROL_CONTEXTS[kind], signed.body, signed.key_id, signed.signature, trusted, what=what, topic=topic
    )
    try:
        return _MODELS[kind].model_validate_json(signed.body)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err.get("loc", ())) or "(root)"
        raise InvalidMessage(f"signed {what} is invalid: {loc}: {err.get('msg')}", topic=topic) from None


def read_unverified(
    payload: bytes | bytearray, kind: ControlKind, *, topic: str | None = None
) -> DesiredState | CampaignAssignment:
    """The message in a signed or unsigned payload, *without* checking any signature.

    For simulated devices and benches, which hold no command keys; an agent uses
    agent/mqtt/control.ControlVerifier.
    """
    if b'"signature"' in payload:
        try:
            return _MODELS[kind].model_validate_json(SignedControl.model_validate_json(payload).body)
        except ValidationError as exc:
            raise InvalidMessage(f"invalid signed {kind} message: {exc.errors()[0].get('msg')}", topic=topic) from None
    return parse(_MODELS[kind], payload, topic=topic)
