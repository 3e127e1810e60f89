"""Signed control state: whoever can publish on a device's topics cannot choose what it runs.

A real coordinator with a command key, a real agent that trusts it, and an attacker on the same
Mosquitto (no ACLs here: the broker lets anyone publish anywhere, the worst case for the agent):
forged, replayed, re-keyed and expired desired states and campaign assignments, and a replayed
command after a restart, are all refused with the reason, and the device keeps what the coordinator
signed.
"""

from __future__ import annotations

import base64
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt import publish

from edgefleet.agent.mqtt.control import ControlVerifier
from edgefleet.local.broker import LocalBroker
from edgefleet.local.fleet import LocalFleet, wait_until
from edgefleet.protocol.commands import sign_command
from edgefleet.protocol.control import SignedControl, sign_control
from edgefleet.protocol.errors import InvalidMessage, SignatureError
from edgefleet.protocol.messages import BundleRef, CampaignAssignment, Command, DesiredState
from edgefleet.protocol.signing import TrustedKeys, key_id, write_keypair
from edgefleet.protocol.topics import Channel, topic
from tests.conftest import DigitsModels, Keys, build

KEY = Ed25519PrivateKey.generate()
TRUSTED: TrustedKeys = {key_id(KEY.public_key()): KEY.public_key()}
LATER = datetime.now(UTC) + timedelta(days=1)


@pytest.fixture
def signed_fleet(tmp_path: Path, mosquitto: LocalBroker, keys: Keys) -> LocalFleet:
    command_key, _ = write_keypair(tmp_path / "command", private_name="command.key", public_name="command.pub")
    fleet = LocalFleet(tmp_path / "fleet", mosquitto.url, [keys.public], command_key=command_key)
    (tmp_path / "fleet").mkdir()
    yield fleet  # type: ignore[misc]
    fleet.stop()


class Retained:
    """The retained payload on one topic, as a new subscriber sees it."""

    def __init__(self, broker: LocalBroker, name: str) -> None:
        self.payload: bytes | None = None
        self._got = threading.Event()
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        self._client.on_message = self._on_message
        self._client.connect("127.0.0.1", broker.port)
        self._client.subscribe(name, qos=1)
        self._client.loop_start()

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        self.payload = msg.payload
        self._got.set()

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


def _rejected(fleet: LocalFleet, device_id: str) -> int:
    device = fleet.device(device_id)
    return int(((device or {}).get("reported") or {}).get("rejected_messages") or 0)


def _active(fleet: LocalFleet, device_id: str) -> str | None:
    device = fleet.device(device_id)
    return (device or {}).get("active_digest")


def test_forged_replayed_and_rekeyed_desired_states_are_refused_across_a_restart(
    tmp_path: Path, signed_fleet: LocalFleet, mosquitto: LocalBroker, keys: Keys, digits: DigitsModels
) -> None:
    # Prepare: a coordinator signing with its command key, one agent trusting it, two signed bundles
    fleet = signed_fleet
    fleet.start_coordinator()
    fleet.add_agent("gw-1")
    fleet.start_agent("gw-1")
    fleet.wait_registered(["gw-1"], timeout=30)
    v1, d1 = build(digits.v1, tmp_path / "v1.bundle", keys, version="1.0.0")
    v2, d2 = build(digits.v2, tmp_path / "v2.bundle", keys, version="2.0.0")
    fleet.upload(v1)
    fleet.upload(v2)
    desired_topic = topic("gw-1", Channel.DESIRED)
    watcher = Retained(mosquitto, desired_topic)
    fleet.deploy(d1)
    fleet.wait_active(d1, ["gw-1"])
    first = wait_until(lambda: watcher.payload if watcher.payload and d1.encode() in watcher.payload else None,
                       timeout=10, what="the signed desired state of revision 1")  # fmt: skip
    watcher.close()
    assert SignedControl.model_validate_json(first).kind == "desired"  # the coordinator signed it
    fleet.deploy(d2)
    fleet.wait_active(d2, ["gw-1"])

    # Execute: an attacker publishes, retained, an unsigned state with a huge revision, a state signed by
    # another key, and the coordinator's own (validly signed) revision 1 again
    forged = DesiredState(
        device_id="gw-1", revision=2**52, bundle=BundleRef(digest=d1, name="digits", version="1.0.0")
    )
    rekeyed = sign_control(forged.model_copy(update={"expires_at": LATER}), Ed25519PrivateKey.generate())
    log = fleet.workdir / "gw-1.log"
    for payload in (forged.to_bytes(), rekeyed.to_bytes(), first):
        publish.single(desired_topic, payload, qos=1, retain=True, hostname="127.0.0.1", port=mosquitto.port)
    wait_until(lambda: "older than revision 2" in log.read_text(), timeout=30, what="the replay refused")

    # ... and the agent restarts with the replayed revision 1 still retained on its topic
    fleet.stop_agent("gw-1")
    fleet.start_agent("gw-1")
    wait_until(lambda: log.read_text().count("older than revision 2") >= 2, timeout=30,
               what="the replay refused again after the restart")  # fmt: skip

    # Assert: each refused with its reason; the device still runs what the coordinator last signed
    text = log.read_text()
    assert "unsigned desired state refused: this agent has command keys" in text
    assert "which is not a trusted command key" in text
    assert "desired state revision 1 is older than revision 2, already accepted" in text
    assert _active(fleet, "gw-1") == d2
    assert fleet.agents["gw-1"].proc is not None and fleet.agents["gw-1"].proc.poll() is None


def test_a_forged_campaign_assignment_starts_no_supernode(
    signed_fleet: LocalFleet, mosquitto: LocalBroker
) -> None:
    # Prepare: a signing coordinator and an agent taking part in campaigns (the default)
    fleet = signed_fleet
    fleet.start_coordinator()
    fleet.add_agent("gw-1")
    fleet.start_agent("gw-1")
    fleet.wait_registered(["gw-1"], timeout=30)
    log = fleet.workdir / "gw-1.log"

    # Execute: an unsigned assignment to an attacker's SuperLink, retained on the device's campaign topic,
    # then the same assignment signed by a key the device does not trust
    forged = CampaignAssignment(device_id="gw-1", campaign_id="evil", superlink="127.0.0.1:9")
    rekeyed = sign_control(forged.model_copy(update={"expires_at": LATER}), Ed25519PrivateKey.generate())
    for payload in (forged.to_bytes(), rekeyed.to_bytes()):
        publish.single(topic("gw-1", Channel.CAMPAIGN), payload, qos=1, retain=True,
                       hostname="127.0.0.1", port=mosquitto.port)  # fmt: skip
    wait_until(lambda: "campaign assignment signed by key" in log.read_text(), timeout=30, what="both refused")

    # Assert: refused with the reasons; no SuperNode was started for it
    text = log.read_text()
    assert "unsigned campaign assignment refused: this agent has command keys" in text
    assert "campaign evil" not in text  # the participant never saw it (it logs "campaign <id>: ...")
    fleet.http.post("/api/v1/devices/gw-1/commands", json={"name": "report_state", "args": {}})
    wait_until(lambda: _rejected(fleet, "gw-1") >= 2, timeout=30, what="a state report counting the refusals")
    assert ((fleet.device("gw-1") or {}).get("reported") or {}).get("campaign") is None


def test_a_command_replayed_after_a_restart_is_refused(signed_fleet: LocalFleet, mosquitto: LocalBroker) -> None:
    # Prepare: a signing coordinator, an agent, and a command the coordinator signed and sent
    fleet = signed_fleet
    fleet.start_coordinator()
    fleet.add_agent("gw-1")
    fleet.start_agent("gw-1")
    fleet.wait_registered(["gw-1"], timeout=30)
    commands_topic = topic("gw-1", Channel.COMMANDS)
    captured: list[bytes] = []
    spy = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    spy.on_message = lambda _c, _u, msg: captured.append(msg.payload)
    spy.connect("127.0.0.1", mosquitto.port)
    spy.subscribe(commands_topic, qos=1)
    spy.loop_start()
    try:
        sent = fleet.http.post("/api/v1/devices/gw-1/commands", json={"name": "report_state", "args": {}})
        assert sent.status_code == 202, sent.text
        wait_until(lambda: captured, timeout=10, what="the command on the wire")
        wait_until(lambda: any(c.get("ok") for c in fleet.get("/api/v1/devices/gw-1/commands")), timeout=30,
                   what="the device's answer")  # fmt: skip

        # Execute: the agent restarts (its replay memory used to be in memory only); the command is sent again
        fleet.stop_agent("gw-1")
        fleet.start_agent("gw-1")
        publish.single(commands_topic, captured[0], qos=1, hostname="127.0.0.1", port=mosquitto.port)

        # Assert: refused as a replay
        log = fleet.workdir / "gw-1.log"
        wait_until(lambda: "was already received (replay)" in log.read_text(), timeout=30, what="the replay refused")
    finally:
        spy.loop_stop()
        spy.disconnect()


def _desired(**fields: object) -> DesiredState:
    return DesiredState(**{"device_id": "gw-1", "revision": 5, "expires_at": LATER} | fields)  # type: ignore[arg-type]


def test_an_expired_or_misaddressed_signed_state_is_refused_and_the_floor_survives(tmp_path: Path) -> None:
    floor = tmp_path / "control-floor.json"
    verifier = ControlVerifier("gw-1", TRUSTED, floor)
    assert verifier.desired(sign_control(_desired(), KEY).to_bytes()).revision == 5

    expired = sign_control(_desired(revision=6, expires_at=datetime.now(UTC) - timedelta(seconds=1)), KEY)
    with pytest.raises(InvalidMessage, match="expired at"):
        verifier.desired(expired.to_bytes())
    with pytest.raises(InvalidMessage, match="without an expiry"):
        verifier.desired(sign_control(_desired(revision=6, expires_at=None), KEY).to_bytes())
    with pytest.raises(InvalidMessage, match="names device 'gw-2'"):
        verifier.desired(sign_control(_desired(device_id="gw-2", revision=7), KEY).to_bytes())
    with pytest.raises(InvalidMessage, match="a signed desired message where a campaign assignment belongs"):
        verifier.campaign(sign_control(_desired(revision=7), KEY).to_bytes())

    # A new verifier on the same file (the agent restarted) keeps revision 5 as the floor
    again = ControlVerifier("gw-1", TRUSTED, floor)
    assert again.desired_revision == 5
    with pytest.raises(InvalidMessage, match="older than revision 5"):
        again.desired(sign_control(_desired(revision=4), KEY).to_bytes())
    assert again.desired(sign_control(_desired(), KEY).to_bytes()).revision == 5  # the same one again is fine


def test_a_command_signature_does_not_pass_as_a_desired_state() -> None:
    command = sign_command(Command(device_id="gw-1", name="ping"), KEY)
    as_state = SignedControl(
        kind="desired", body=_desired().model_dump_json(), key_id=command.key_id, signature=command.signature
    )
    with pytest.raises(SignatureError, match="altered or forged"):
        ControlVerifier("gw-1", TRUSTED, Path("/nonexistent/floor.json")).desired(as_state.to_bytes())
    assert base64.b64decode(command.signature)  # a real signature, by a trusted key, over other bytes


def test_without_command_keys_unsigned_state_is_taken_and_signed_state_is_refused(tmp_path: Path) -> None:
    verifier = ControlVerifier("gw-1", {}, tmp_path / "floor.json")
    assert verifier.desired(_desired(expires_at=None).to_bytes()).revision == 5
    with pytest.raises(SignatureError, match="no command keys configured"):
        verifier.desired(sign_control(_desired(), KEY).to_bytes())
