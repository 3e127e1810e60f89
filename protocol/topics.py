"""The MQTT topic tree, under one versioned prefix; the only place topic strings are spelled out.

Every device owns the subtree ``edgefleet/v1/devices/{device_id}/``; a broker ACL can therefore
grant a device exactly its own subtree (see ``device_acl_patterns``).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from enum import StrEnum

from edgefleet.protocol.errors import InvalidMessage

__all__ = [
    "COORDINATOR_STATUS",
    "PREFIX",
    "Channel",
    "DeviceTopic",
    "channel_subscription",
    "coordinator_subscriptions",
    "device_acl_patterns",
    "device_subscriptions",
    "parse_topic",
    "shared_subscription",
    "topic",
    "validate_device_id",
]

PREFIX = "edgefleet/v1"
# Retained, with the coordinator's last will: devices hold their outbox while it is not "online"
# (a broker that restarted without persistence would otherwise take messages nobody subscribes to).
COORDINATOR_STATUS = f"{PREFIX}/coordinator/status"
_DEVICE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class Channel(StrEnum):
    """One leaf of a device's subtree. The value is the topic suffix."""

    DESIRED = "desired"  # coordinator -> device, retained
    REPORTED = "reported"  # device -> coordinator, retained
    AVAILABILITY = "availability"  # device -> coordinator, retained, last will "offline"
    TELEMETRY = "telemetry"  # device -> coordinator
    COMMANDS = "commands"  # coordinator -> device
    COMMAND_RESULTS = "command_results"  # device -> coordinator
    CHUNK_REQUESTS = "chunks/request"  # device -> coordinator
    CHUNKS = "chunks/data"  # coordinator -> device
    CAMPAIGN = "campaign"  # coordinator -> device, retained: the federated campaign the device serves


# Which side publishes each channel, and whether the broker keeps the last message.
RETAINED = frozenset({Channel.DESIRED, Channel.REPORTED, Channel.AVAILABILITY, Channel.CAMPAIGN})
FROM_DEVICE = frozenset(
    {
        Channel.REPORTED,
        Channel.AVAILABILITY,
        Channel.TELEMETRY,
        Channel.COMMAND_RESULTS,
        Channel.CHUNK_REQUESTS,
    }
)
TO_DEVICE = frozenset({Channel.DESIRED, Channel.COMMANDS, Channel.CHUNKS, Channel.CAMPAIGN})


def validate_device_id(device_id: str) -> str:
    """Return ``device_id`` if it is usable as one topic level, else raise InvalidMessage."""
    if not _DEVICE_ID.match(device_id):
        raise InvalidMessage(
            f"invalid device id {device_id!r}: use 1-64 letters, digits, '_', '.', '-', starting alphanumeric"
        )
    return device_id


def topic(device_id: str, channel: Channel) -> str:
    """The topic of ``channel`` for one device."""
    return f"{PREFIX}/devices/{validate_device_id(device_id)}/{channel.value}"


@dataclass(frozen=True)
class DeviceTopic:
    device_id: str
    channel: Channel


@functools.lru_cache(maxsize=16384)  # a fleet's topics recur with every message; the result is immutable
def parse_topic(name: str) -> DeviceTopic:
    """Split a received topic into device id and channel; raise InvalidMessage for anything else."""
    head = f"{PREFIX}/devices/"
    if not name.startswith(head):
        raise InvalidMessage(f"topic {name!r} is outside {head}", topic=name)
    device_id, _, suffix = name[len(head) :].partition("/")
    try:
        channel = Channel(suffix)
    except ValueError:
        raise InvalidMessage(f"unknown channel {suffix!r} in topic {name!r}", topic=name) from None
    return DeviceTopic(validate_device_id(device_id), channel)


def device_subscriptions(device_id: str) -> list[str]:
    """What an agent subscribes to."""
    return [topic(device_id, c) for c in sorted(TO_DEVICE)] + [COORDINATOR_STATUS]


def channel_subscription(channel: Channel) -> str:
    """The topic filter of ``channel`` for every device."""
    return f"{PREFIX}/devices/+/{channel.value}"


def shared_subscription(topic_filter: str, group: str | None) -> str:
    """``topic_filter`` as an MQTT shared subscription of ``group`` (``$share/<group>/<filter>``: the broker
    hands each message to one member of the group), or as it is without a group."""
    if group is None:
        return topic_filter
    if not group or any(c in group for c in "/+#$"):
        raise ValueError(f"not a shared subscription group name: {group!r}")
    return f"$share/{group}/{topic_filter}"


def coordinator_subscriptions() -> list[str]:
    """What the coordinator subscribes to: every device's outbound channels."""
    return [channel_subscription(c) for c in sorted(FROM_DEVICE)]


def device_acl_patterns() -> list[tuple[str, str]]:
    """Mosquitto ACL ``pattern`` lines (access, topic) that confine a device to its own subtree.

    Mosquitto substitutes ``%u`` with the username, so each device's username is its id.
    """
    rules = [("write", f"{PREFIX}/devices/%u/{c.value}") for c in sorted(FROM_DEVICE)]
    rules += [("read", f"{PREFIX}/devices/%u/{c.value}") for c in sorted(TO_DEVICE)]
    rules.append(("read", COORDINATOR_STATUS))
    return rules
