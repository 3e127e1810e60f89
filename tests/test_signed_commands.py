"""Signed commands: what the agent's CommandVerifier accepts and what it refuses, with the reason."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefleet.agent.mqtt.commands import CommandVerifier
from edgefleet.protocol.commands import SignedCommand, sign_command
from edgefleet.protocol.errors import InvalidMessage, SignatureError
from edgefleet.protocol.messages import Command
from edgefleet.protocol.signing import TrustedKeys, key_id

KEY = Ed25519PrivateKey.generate()
OTHER = Ed25519PrivateKey.generate()
TRUSTED: TrustedKeys = {key_id(KEY.public_key()): KEY.public_key()}


def _signed(key: Ed25519PrivateKey = KEY, **fields: object) -> SignedCommand:
    return sign_command(Command(**{"device_id": "gw-1", "name": "ping"} | fields), key)  # type: ignore[arg-type]


def _verifier(**kw: object) -> CommandVerifier:
    return CommandVerifier("gw-1", TRUSTED, **kw)  # type: ignore[arg-type]


def test_a_signed_command_for_this_device_is_accepted_once() -> None:
    signed = _signed(name="report_state")
    verifier = _verifier()
    command = verifier.verify(signed.to_bytes())
    assert command.name == "report_state" and command.device_id == "gw-1"
    with pytest.raises(InvalidMessage, match="already received"):
        verifier.verify(signed.to_bytes())


def _tampered_command() -> bytes:
    signed = _signed()
    return signed.model_copy(update={"command": signed.command.replace('"ping"', '"report_state"')}).to_bytes()


def _tampered_signature() -> bytes:
    signed = _signed()
    raw = bytearray(base64.b64decode(signed.signature))
    raw[0] ^= 0x01
    return signed.model_copy(update={"signature": base64.b64encode(raw).decode()}).to_bytes()


def _signature_moved_to_another_key() -> bytes:
    return _signed().model_copy(update={"key_id": key_id(OTHER.public_key())}).to_bytes()


@pytest.mark.parametrize(
    ("payload", "error", "reason"),
    [
        (lambda: _tampered_command(), SignatureError, "altered or forged"),
        (lambda: _tampered_signature(), SignatureError, "altered or forged"),
        (lambda: _signed(OTHER).to_bytes(), SignatureError, "not a trusted command key"),
        (lambda: _signature_moved_to_another_key(), SignatureError, "not a trusted command key"),
        (lambda: Command(device_id="gw-1", name="ping").to_bytes(), SignatureError, "unsigned command"),
        (lambda: b'{"name": "format_disk"}', SignatureError, "unsigned command"),
        (lambda: _signed(device_id="gw-2").to_bytes(), InvalidMessage, "for device 'gw-2'"),
        (
            lambda: _signed(sent_at=datetime.now(UTC) - timedelta(hours=1)).to_bytes(),
            InvalidMessage,
            "sent 3600s ago",
        ),
        (lambda: _signed(sent_at=datetime.now(UTC) + timedelta(hours=1)).to_bytes(), InvalidMessage, "in the future"),
        (lambda: b"\x00not json", InvalidMessage, "not JSON"),
        (lambda: json.dumps({"command": "{}", "key_id": "0" * 16}).encode(), SignatureError, "unsigned"),
    ],
    ids=[
        "tampered-command",
        "tampered-signature",
        "unknown-key",
        "wrong-key-id",
        "unsigned",
        "unsigned-garbage",
        "other-device",
        "too-old",
        "future",
        "not-json",
        "incomplete-envelope",
    ],
)
def test_bad_commands_are_refused_with_a_reason(
    payload: Callable[[], bytes], error: type[Exception], reason: str
) -> None:
    with pytest.raises(error, match=reason):
        _verifier().verify(payload())


def test_a_signed_but_invalid_command_is_refused() -> None:
    text = json.dumps({"device_id": "gw-1", "name": "format_disk"})
    signed = SignedCommand(
        command=text,
        key_id=key_id(KEY.public_key()),
        signature=base64.b64encode(KEY.sign(b"edgefleet/v1 command\n" + text.encode())).decode(),
    )
    with pytest.raises(InvalidMessage, match="signed command is invalid: name"):
        _verifier().verify(signed.to_bytes())


def test_a_command_signature_is_bound_to_commands() -> None:
    """A signature over the bare bytes (as for a manifest) does not verify as a command."""
    command = Command(device_id="gw-1", name="ping").model_dump_json()
    forged = SignedCommand(
        command=command,
        key_id=key_id(KEY.public_key()),
        signature=base64.b64encode(KEY.sign(command.encode())).decode(),
    )
    with pytest.raises(SignatureError, match="altered or forged"):
        _verifier().verify(forged.to_bytes())


def test_without_command_keys_every_command_is_refused() -> None:
    with pytest.raises(SignatureError, match="no command keys configured"):
        CommandVerifier("gw-1", {}).verify(_signed().to_bytes())


def test_replay_memory_is_bounded() -> None:
    verifier = _verifier(remember=2)
    first = _signed()
    for signed in (first, _signed(), _signed()):
        verifier.verify(signed.to_bytes())
    verifier.verify(first.to_bytes())  # forgotten after two newer ones; the age limit still applies
