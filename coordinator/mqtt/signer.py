"""Commands to devices: signed with the coordinator's command key, published on the device's commands topic."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import ValidationError

from edgefleet.coordinator.errors import CoordinatorError, Rejected
from edgefleet.protocol.commands import SignedCommand, sign_command
from edgefleet.protocol.control import SignedControl, sign_control
from edgefleet.protocol.errors import SignatureError
from edgefleet.protocol.messages import MAX_CONTROL_BYTES, CampaignAssignment, Command, DesiredState
from edgefleet.protocol.signing import key_id, load_private_key
from edgefleet.protocol.topics import Channel, topic

__all__ = ["CommandNotSent", "CommandSigner", "publish_command"]

log = logging.getLogger(__name__)


class CommandNotSent(CoordinatorError):
    """The MQTT client did not accept the command for sending (HTTP 503)."""


class CommandSigner:
    """Signs commands with the coordinator's command key."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        self.key_id = key_id(private_key.public_key())
        self.public_pem = (
            private_key.public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            .decode()
        )

    @classmethod
    def from_file(cls, path: Path) -> CommandSigner:
        try:
            return cls(load_private_key(path))
        except (OSError, ValueError, TypeError) as exc:  # SignatureError is a ValueError; TypeError: encrypted
            reason = exc.reason if isinstance(exc, SignatureError) else str(exc)
            raise Rejected(f"command_key {path}: {reason}") from None

    def command(self, device_id: str, name: str, args: dict[str, Any]) -> tuple[Command, SignedCommand]:
        """Build and sign a command; Rejected if it is not one the protocol knows or is too large."""
        try:
            command = Command(device_id=device_id, name=name, args=args)  # type: ignore[arg-type]
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = ".".join(str(p) for p in err.get("loc", ())) or "(root)"
            raise Rejected(f"invalid command: {loc}: {err['msg']}") from None
        try:
            signed = sign_command(command, self._key)
        except ValidationError:  # the command's JSON is longer than a signed envelope holds
            limit = f"{MAX_CONTROL_BYTES} bytes"
            raise Rejected(f"command exceeds what a signed command holds ({limit}); use smaller args") from None
        if len(signed.to_bytes()) > MAX_CONTROL_BYTES:
            raise Rejected(f"signed command exceeds {MAX_CONTROL_BYTES} bytes; send smaller args")
        return command, signed


    def control(self, message: DesiredState | CampaignAssignment) -> SignedControl:
        """A desired state or campaign assignment signed for the device it names."""
        return sign_control(message, self._key)


def publish_command(client: mqtt.Client, command: Command, signed: SignedCommand) -> None:
    """QoS 1, not retained: a command is for now; an offline device gets it from its persistent session."""
    info = client.publish(topic(command.device_id, Channel.COMMANDS), signed.to_bytes(), qos=1)
    if info.rc != mqtt.MQTT_ERR_SUCCESS:
        raise CommandNotSent(f"command {command.message_id} not sent: {mqtt.error_string(info.rc)}")
    log.info("command %s (%s) sent to %s", command.message_id, command.name, command.device_id)
