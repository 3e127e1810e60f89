"""Signed commands: the envelope the coordinator publishes on a device's commands topic.

The coordinator signs the exact JSON bytes of a ``Command`` with its ed25519 *command key* (not the
bundle signing key); a device runs a command only if the signature verifies against one of its
configured command keys. The signed bytes are prefixed with a context string, so a signature made
for a command can never pass as one over a manifest or anything else signed with the same key.
"""

from __future__ import annotations

import base64
from typing import Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgefleet.protocol.errors import InvalidMessage, SignatureError
from edgefleet.protocol.messages import MAX_CONTROL_BYTES, Command
from edgefleet.protocol.signing import TrustedKeys, key_id

__all__ = ["COMMAND_CONTEXT", "SignedCommand", "check_envelope_signature", "sign_command", "verify_signed_command"]

COMMAND_CONTEXT = b"edgefleet/v1 command\n"


class SignedCommand(BaseModel):
    """A ``Command`` as the exact JSON text that was signed, the signing key's id and the signature."""

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = 1
    command: str = Field(max_length=MAX_CONTROL_BYTES, description="The Command's JSON text, exactly as signed.")
    key_id: str = Field(pattern=r"^[0-9a-f]{16}$", description="Id of the command key that signed it.")
    signature: str = Field(
        max_length=128, description="base64 of the ed25519 signature over COMMAND_CONTEXT + command (UTF-8)."
    )

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()


def sign_command(command: Command, private_key: Ed25519PrivateKey) -> SignedCommand:
    text = command.model_dump_json()
    return SignedCommand(
        command=text,
        key_id=key_id(private_key.public_key()),
        signature=base64.b64encode(private_key.sign(COMMAND_CONTEXT + text.encode())).decode("ascii"),
    )


def verify_signed_command(signed: SignedCommand, trusted: TrustedKeys, *, topic: str | None = None) -> Command:
    """Check the signature against ``trusted`` command keys, then parse the command it covers.

    Raises SignatureError (unknown key, bad signature) or InvalidMessage (malformed command).
    """
    check_envelope_signature(
        COMMAND_CONTEXT, signed.command, signed.key_id, signed.signature, trusted, what="command", topic=topic
    )
    try:
        return Command.model_validate_json(signed.command)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err.get("loc", ())) or "(root)"
        raise InvalidMessage(f"signed command is invalid: {loc}: {err.get('msg')}", topic=topic) from None


def check_envelope_signature(
    context: bytes, text: str, signer: str, signature_b64: str, trusted: TrustedKeys, *, what: str, topic: str | None
) -> None:
    """Raise SignatureError unless ``signature_b64`` is a trusted command key's signature over context + text."""
    key = trusted.get(signer)
    if key is None:
        raise SignatureError(f"{what} signed by key {signer}, which is not a trusted command key", topic=topic)
    try:
        signature = base64.b64decode(signature_b64, validate=True)
    except ValueError:
        raise SignatureError(f"{what} signature is not valid base64", topic=topic) from None
    try:
        key.verify(signature, context + text.encode())
    except InvalidSignature:
        raise SignatureError(
            f"invalid signature by command key {signer}: {what} altered or forged", topic=topic
        ) from None
