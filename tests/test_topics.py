import pytest

from edgefleet.protocol.errors import InvalidMessage
from edgefleet.protocol.topics import (
    COORDINATOR_STATUS,
    PREFIX,
    Channel,
    coordinator_subscriptions,
    device_acl_patterns,
    device_subscriptions,
    parse_topic,
    topic,
)


def test_topics_round_trip_for_every_channel() -> None:
    for channel in Channel:
        name = topic("pi-01", channel)
        assert name.startswith(f"{PREFIX}/devices/pi-01/")
        parsed = parse_topic(name)
        assert (parsed.device_id, parsed.channel) == ("pi-01", channel)


@pytest.mark.parametrize("device_id", ["", "a/b", "+", "#", "x" * 65, "-lead", "a b"])
def test_device_ids_that_would_break_the_topic_tree_are_refused(device_id: str) -> None:
    with pytest.raises(InvalidMessage, match="invalid device id"):
        topic(device_id, Channel.DESIRED)


@pytest.mark.parametrize(
    "name",
    [
        "other/v1/devices/a/desired",
        f"{PREFIX}/devices/a/nope",
        f"{PREFIX}/devices/a",
        f"{PREFIX}/devices/+/desired",
    ],
)
def test_foreign_topics_are_refused_with_a_reason(name: str) -> None:
    with pytest.raises(InvalidMessage):
        parse_topic(name)


def test_subscriptions_split_by_direction() -> None:
    agent = set(device_subscriptions("pi-01"))
    assert topic("pi-01", Channel.DESIRED) in agent
    assert topic("pi-01", Channel.REPORTED) not in agent
    coordinator = set(coordinator_subscriptions())
    assert f"{PREFIX}/devices/+/reported" in coordinator
    assert f"{PREFIX}/devices/+/desired" not in coordinator


def test_acl_confines_a_device_to_its_own_subtree() -> None:
    rules = device_acl_patterns()
    # Its own subtree, plus reading (only) the coordinator's status.
    assert all("/devices/%u/" in pattern for _, pattern in rules if pattern != COORDINATOR_STATUS)
    assert [access for access, pattern in rules if pattern == COORDINATOR_STATUS] == ["read"]
    assert ("read", f"{PREFIX}/devices/%u/desired") in rules
    assert ("write", f"{PREFIX}/devices/%u/reported") in rules
