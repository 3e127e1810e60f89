"""The coordinator's Mosquitto password and ACL files, against a real Mosquitto 2.0 that reads them."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefleet.coordinator.security.broker_auth import BrokerAuth, check_password, hash_password, render_acl_file
from edgefleet.local.broker import LocalBroker
from edgefleet.local.fleet import wait_until
from edgefleet.protocol.messages import Availability, DesiredState
from edgefleet.protocol.topics import PREFIX, Channel, topic
from tests.conftest import SecuredBroker, broker_auth_lines
from tests.mqtt_probe import MqttProbe

PASSWORDS = {"dev-a": "password-of-dev-a", "dev-b": "password-of-dev-b"}


@pytest.fixture
def devices(secured_broker: SecuredBroker) -> Iterator[BrokerAuth]:
    """dev-a hashed by mosquitto_passwd, dev-b by the built-in PBKDF2 fallback: the broker must accept both."""
    auth = BrokerAuth(secured_broker.auth, username=secured_broker.username, password=secured_broker.password)
    hashes = {"dev-a": auth.hash(PASSWORDS["dev-a"]), "dev-b": hash_password(PASSWORDS["dev-b"], tool=None)}
    assert auth.apply(hashes) is True, "new entries change the file and reload the broker"
    assert auth.apply(hashes) is False, "the same entries again change nothing"
    yield auth


def _probe(broker: SecuredBroker, user: str) -> MqttProbe:
    password = broker.password if user == broker.username else PASSWORDS[user]
    probe = MqttProbe(broker.url, user, password)
    assert probe.start() == "Success", f"{user} could not connect"
    return probe


def test_hashes_are_mosquittos_format_both_ways() -> None:
    if shutil.which("mosquitto_passwd") is None:
        pytest.skip("mosquitto_passwd is not installed")
    by_tool = hash_password("s3cret-pw")
    by_us = hash_password("s3cret-pw", tool=None)
    assert by_tool.startswith("$7$101$") and by_us.startswith("$7$101$")
    assert check_password("s3cret-pw", by_tool) and check_password("s3cret-pw", by_us)
    assert not check_password("other", by_tool)
    # The tool cuts passwords at ':'; those are hashed here instead, and still verify.
    assert check_password("with:colon", hash_password("with:colon"))


def test_acl_confines_devices_to_their_own_subtree(secured_broker: SecuredBroker, devices: BrokerAuth) -> None:
    # Prepare: the coordinator publishes retained desired state for both devices and listens to reports.
    coordinator = _probe(secured_broker, secured_broker.username)
    for device_id in ("dev-a", "dev-b"):
        desired = DesiredState(device_id=device_id, revision=1)
        coordinator.publish(topic(device_id, Channel.DESIRED), desired.to_bytes(), retain=True)
    coordinator.subscribe(f"{PREFIX}/devices/+/{Channel.AVAILABILITY.value}")
    dev_a = _probe(secured_broker, "dev-a")
    try:
        # Execute + Assert: reading. Its own desired state arrives; another device's never does,
        # not even through a wildcard over the whole tree.
        dev_a.subscribe(topic("dev-b", Channel.DESIRED))
        assert dev_a.collect(0.7) == [], "dev-a read dev-b's desired state"
        dev_a.subscribe(f"{PREFIX}/#")
        assert {m.topic for m in dev_a.collect(1.0)} == {topic("dev-a", Channel.DESIRED)}

        # Writing: to another device's topic it is dropped; to its own it reaches the coordinator.
        forged = Availability(device_id="dev-b", state="offline")
        dev_a.publish(topic("dev-b", Channel.AVAILABILITY), forged.to_bytes())
        dev_a.publish(topic("dev-b", Channel.DESIRED), DesiredState(device_id="dev-b", revision=9).to_bytes())
        dev_a.publish(topic("dev-a", Channel.AVAILABILITY), Availability(device_id="dev-a", state="online").to_bytes())
        received = coordinator.collect(1.0)
        assert [m.topic for m in received] == [topic("dev-a", Channel.AVAILABILITY)]

        # The retained desired state of dev-b is still the coordinator's, not dev-a's forgery.
        with MqttProbe(secured_broker.url, "dev-b", PASSWORDS["dev-b"]) as dev_b:
            assert dev_b.start() == "Success"
            dev_b.subscribe(topic("dev-b", Channel.DESIRED))
            (message,) = dev_b.collect(1.0)
            assert DesiredState.model_validate_json(message.payload).revision == 1
    finally:
        dev_a.stop()
        coordinator.stop()


def test_unknown_users_and_wrong_passwords_are_refused(secured_broker: SecuredBroker, devices: BrokerAuth) -> None:
    probes = [MqttProbe(secured_broker.url, u, p) for u, p in (("dev-a", "wrong"), ("stranger", "x"), (None, None))]
    try:
        assert [probe.start() for probe in probes] == ["Not authorized"] * 3
    finally:
        for probe in probes:
            probe.stop()


def test_revocation_disconnects_a_connected_device_on_reload(
    secured_broker: SecuredBroker, devices: BrokerAuth
) -> None:
    # Prepare: dev-a connected with a last will, dev-b connected, the coordinator listening.
    coordinator = _probe(secured_broker, secured_broker.username)
    coordinator.subscribe(topic("dev-a", Channel.AVAILABILITY))
    dev_a = MqttProbe(secured_broker.url, "dev-a", PASSWORDS["dev-a"])
    will = Availability(device_id="dev-a", state="offline").to_bytes()
    dev_a.client.will_set(topic("dev-a", Channel.AVAILABILITY), will, qos=1)
    assert dev_a.start() == "Success"
    dev_b = _probe(secured_broker, "dev-b")
    try:
        # Execute: dev-a's entry leaves the password file; the broker is reloaded (SIGHUP).
        devices.apply({"dev-b": hash_password(PASSWORDS["dev-b"], tool=None)})

        # Assert: Mosquitto 2.0.11 drops dev-a at once and refuses every reconnect.
        wait_until(lambda: dev_a.disconnects > 0, timeout=5, what="revoked dev-a disconnected")
        assert dev_a.connects.get(timeout=10) == "Not authorized"
        assert not dev_a.connected.is_set()
        assert dev_b.connected.is_set() and dev_b.disconnects == 0, "the other device is untouched"
        # It treats the drop like a clean disconnect: no last will. (The coordinator's revoke
        # publishes "offline" itself for that reason.)
        assert coordinator.collect(0.5) == []
    finally:
        dev_a.stop()
        dev_b.stop()
        coordinator.stop()


def test_username_as_client_id_stops_session_takeover(tmp_path: Path, secured_broker: SecuredBroker) -> None:
    """Mosquitto lets any user take over a client id; ``use_username_as_clientid`` closes that (docs advise it)."""
    auth = secured_broker.auth.model_copy(
        update={"password_file": tmp_path / "p2", "acl_file": tmp_path / "a2", "reload_command": None}
    )
    hashes = {d: hash_password(p, tool=None) for d, p in PASSWORDS.items()}
    BrokerAuth(auth, username=secured_broker.username, password=secured_broker.password).apply(hashes)
    for hardened in (False, True):
        extra = broker_auth_lines(auth)
        with LocalBroker(tmp_path / f"broker-{hardened}", prefer="mosquitto", extra_config=extra + (
            "\nuse_username_as_clientid true" if hardened else ""
        )) as broker:  # fmt: skip
            victim = MqttProbe(broker.url, "dev-b", PASSWORDS["dev-b"], client_id="edgefleet-agent-dev-b")
            attacker = MqttProbe(broker.url, "dev-a", PASSWORDS["dev-a"], client_id="edgefleet-agent-dev-b")
            try:
                assert victim.start() == "Success" and attacker.start() == "Success"
                if hardened:
                    victim.collect(1.0)
                    assert victim.disconnects == 0, "another user's connection took over dev-b's client id"
                else:
                    wait_until(lambda v=victim: v.disconnects > 0, timeout=5, what="takeover")  # type: ignore[misc]
            finally:
                attacker.stop()
                victim.stop()


def test_acl_file_gives_the_coordinator_everything_and_devices_patterns() -> None:
    text = render_acl_file("edgefleet-coordinator")
    assert "user edgefleet-coordinator\ntopic readwrite edgefleet/v1/#" in text
    assert f"pattern read {PREFIX}/devices/%u/desired" in text
    assert f"pattern write {PREFIX}/devices/%u/reported" in text
    assert "pattern readwrite" not in text, "a device never both reads and writes one channel"
