"""Enrollment, revocation, API token roles and signed commands through the REST API, on a real Mosquitto."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from edgefleet.agent.mqtt.commands import CommandVerifier
from edgefleet.common.mqtt import BrokerConfig
from edgefleet.coordinator.api.app import create_app
from edgefleet.coordinator.api.security import Security
from edgefleet.coordinator.config import CoordinatorConfig
from edgefleet.coordinator.service import Coordinator
from edgefleet.local.broker import LocalBroker
from edgefleet.local.fleet import wait_until
from edgefleet.protocol.enrollment import EnrollResponse
from edgefleet.protocol.signing import generate_keypair, key_id, load_public_key
from edgefleet.protocol.topics import Channel, topic
from tests.conftest import Keys, SecuredBroker
from tests.mqtt_probe import MqttProbe

ADMIN = "bootstrap-admin-token-0123456789"


@dataclass
class Api:
    http: TestClient
    coordinator: Coordinator
    security: Security
    broker: SecuredBroker | LocalBroker
    command_public: Path | None

    def call(self, method: str, path: str, token: str | None = ADMIN, **kw: Any) -> Any:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return self.http.request(method, path, headers=headers, **kw)

    def token(self, role: str, **body: Any) -> str:
        response = self.call("POST", "/api/v1/tokens", json={"role": role, "name": f"test {role}"} | body)
        assert response.status_code == 201, response.text
        return str(response.json()["token"])

    def enroll_token(self, device_class: str = "x86-gateway", **body: Any) -> str:
        response = self.call("POST", "/api/v1/enroll-tokens", json={"device_class": device_class} | body)
        assert response.status_code == 201, response.text
        return str(response.json()["token"])

    def enroll(self, token: str, **body: Any) -> Any:
        return self.call("POST", "/api/v1/enroll", token=None, json={"token": token} | body)


def _app(tmp_path: Path, broker: Any, config: CoordinatorConfig, command_public: Path | None) -> Iterator[Api]:
    coordinator = Coordinator(config)
    app = create_app(coordinator, token=ADMIN)
    with TestClient(app) as http:
        wait_until(coordinator.link.subscribed.is_set, timeout=15, what="coordinator on the broker")
        yield Api(http, coordinator, app.state.security, broker, command_public)


@pytest.fixture
def api(tmp_path: Path, secured_broker: SecuredBroker, keys: Keys) -> Iterator[Api]:
    """A coordinator that manages the broker's auth files and signs commands."""
    private_pem, public_pem = generate_keypair()
    (tmp_path / "command.key").write_bytes(private_pem)
    (tmp_path / "command.pub").write_bytes(public_pem)
    config = CoordinatorConfig(
        data_dir=tmp_path / "coord",
        trusted_keys=[keys.public],
        broker=BrokerConfig(url=secured_broker.url, username=secured_broker.username, password=secured_broker.password),
        broker_auth=secured_broker.auth,
        command_key=tmp_path / "command.key",
    )
    yield from _app(tmp_path, secured_broker, config, tmp_path / "command.pub")


def test_token_roles_401_403_200(api: Api) -> None:
    # Prepare: one token per role, created by the bootstrap admin from the config.
    tokens = {role: api.token(role) for role in ("read-only", "operator", "admin")}
    needs: list[tuple[str, str, dict[str, Any], str]] = [  # (method, path, request, least role)
        ("GET", "/api/v1/devices", {}, "read-only"),
        ("GET", "/api/v1/bundles", {}, "read-only"),
        ("GET", "/api/v1/identities", {}, "read-only"),
        ("GET", "/api/v1/rollouts", {}, "read-only"),
        ("POST", "/api/v1/bundles", {"content": b"garbage"}, "operator"),
        ("POST", "/api/v1/deployments", {"json": {"bundle_digest": "0" * 64}}, "operator"),
        ("POST", "/api/v1/devices/nobody/commands", {"json": {"name": "ping"}}, "operator"),
        ("POST", "/api/v1/enroll-tokens", {"json": {"device_class": "rpi4"}}, "admin"),
        ("GET", "/api/v1/enroll-tokens", {}, "admin"),
        ("POST", "/api/v1/tokens", {"json": {"role": "read-only", "name": "x"}}, "admin"),
        ("GET", "/api/v1/tokens", {}, "admin"),
        ("DELETE", "/api/v1/devices/nobody", {}, "admin"),
    ]
    rank = {"read-only": 0, "operator": 1, "admin": 2}

    # Execute + Assert: every role against every route.
    for role, token in tokens.items():
        assert api.call("GET", "/api/v1/whoami", token).json()["role"] == role
        for method, path, request, least in needs:
            response = api.call(method, path, token, **request)
            if rank[role] >= rank[least]:
                assert response.status_code not in (401, 403), (role, method, path, response.text)
            else:
                assert response.status_code == 403, (role, method, path, response.text)
                assert f"needs role {least}" in response.json()["detail"]

    for header in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {ADMIN}"}):
        response = api.http.get("/api/v1/devices", headers=header)
        assert response.status_code == 401 and response.json()["detail"]
        assert response.headers["www-authenticate"] == "Bearer"
    assert api.http.get("/healthz").status_code == 200

    # Revoked and expired tokens stop working.
    listed = {t["name"]: t for t in api.call("GET", "/api/v1/tokens").json()}
    assert "token" not in listed["test operator"] and "token_hash" not in listed["test operator"]
    assert api.call("DELETE", f"/api/v1/tokens/{listed['test operator']['token_id']}").status_code == 200
    response = api.call("GET", "/api/v1/devices", tokens["operator"])
    assert response.status_code == 401 and "revoked" in response.json()["detail"]
    short = api.token("read-only", ttl_s=0.5)
    assert api.call("GET", "/api/v1/devices", short).status_code == 200
    time.sleep(0.6)
    response = api.call("GET", "/api/v1/devices", short)
    assert response.status_code == 401 and "expired" in response.json()["detail"]

    # Only hashes are stored.
    stored = b"".join(p.read_bytes() for p in (api.coordinator.config.data_dir).glob("fleet.db*"))
    assert not any(t.encode() in stored for t in tokens.values())


def test_enrollment_token_is_one_time_and_expires(api: Api, keys: Keys) -> None:
    token = api.enroll_token()
    response = api.enroll(token)
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    enrolled = EnrollResponse.model_validate(response.json())
    assert enrolled.device_id.startswith("x86-gateway-") and enrolled.device_class == "x86-gateway"
    assert enrolled.broker.username == enrolled.device_id and enrolled.broker.managed
    assert enrolled.broker.url == api.broker.url and enrolled.broker.password
    assert enrolled.trusted_keys == [keys.public.read_text()]
    assert api.command_public is not None and enrolled.command_keys == [api.command_public.read_text()]

    # The credentials work on the broker; the password is stored nowhere in clear.
    with MqttProbe(api.broker.url, enrolled.device_id, enrolled.broker.password) as probe:
        assert probe.start() == "Success"
    assert isinstance(api.broker, SecuredBroker)
    assert f"{enrolled.device_id}:$7$" in api.broker.auth.password_file.read_text()
    stored = b"".join(p.read_bytes() for p in api.coordinator.config.data_dir.glob("fleet.db*"))
    assert enrolled.broker.password.encode() not in stored and token.encode() not in stored

    # Reused, unknown and expired tokens are refused with the reason.
    again = api.enroll(token)
    assert again.status_code == 401 and "already used" in again.json()["detail"]
    unknown = api.enroll("efe_" + "x" * 43)
    assert unknown.status_code == 401 and "unknown enrollment token" in unknown.json()["detail"]
    short = api.enroll_token(ttl_s=0.5)
    time.sleep(0.6)
    expired = api.enroll(short)
    assert expired.status_code == 401 and "expired" in expired.json()["detail"]

    # A token can fix the device id; an enrolled id cannot be handed out twice.
    fixed = api.enroll(api.enroll_token("rpi4", device_id="pi-07"), device_id="pi-07")
    assert fixed.status_code == 200 and fixed.json()["device_id"] == "pi-07"
    taken = api.call("POST", "/api/v1/enroll-tokens", json={"device_class": "rpi4", "device_id": "pi-07"})
    assert taken.status_code == 409 and "already enrolled" in taken.json()["detail"]
    unknown_class = api.call("POST", "/api/v1/enroll-tokens", json={"device_class": "toaster"})
    assert unknown_class.status_code == 422 and "unknown device class" in unknown_class.json()["detail"]
    assert [i["device_id"] for i in api.call("GET", "/api/v1/identities").json()] == sorted(
        [enrolled.device_id, "pi-07"]
    )


def test_a_device_reporting_another_class_than_its_enrolled_one_is_refused_and_alerted(api: Api) -> None:
    """Its enrolled class is authoritative: no re-class, so no other class's bundles and gates."""
    from edgefleet.protocol.messages import ReportedState

    enrolled = EnrollResponse.model_validate(api.enroll(api.enroll_token("x86-gateway", device_id="gw-7")).json())
    claim = ReportedState(device_id="gw-7", device_class="rpi4", agent_version="t", status="ready",
                          started_at=time.time())  # type: ignore[arg-type]  # fmt: skip
    with MqttProbe(api.broker.url, "gw-7", enrolled.broker.password) as device:
        assert device.start() == "Success"
        device.publish(topic("gw-7", Channel.REPORTED), claim.to_bytes(), retain=True)

        def alerted() -> list[dict[str, Any]]:
            return [a for a in api.call("GET", "/api/v1/alerts").json() if a["kind"] == "class_mismatch"]

        wait_until(lambda: bool(alerted()), timeout=15, what="the class_mismatch alert")
    [alert] = alerted()
    assert alert["device_id"] == "gw-7" and "reported device class 'rpi4', enrolled as 'x86-gateway'" in alert["detail"]
    device_row = api.call("GET", "/api/v1/devices/gw-7").json()
    assert device_row["device_class"] == "x86-gateway" and device_row["reported"] is None
    # A report of its own class is taken, and clears the flag.
    honest = claim.model_copy(update={"device_class": "x86-gateway"})
    with MqttProbe(api.broker.url, "gw-7", enrolled.broker.password) as device:
        assert device.start() == "Success"
        device.publish(topic("gw-7", Channel.REPORTED), honest.to_bytes(), retain=True)
        wait_until(lambda: not alerted(), timeout=15, what="the flag cleared")
    assert api.call("GET", "/api/v1/devices/gw-7").json()["status"] == "ready"


def test_the_coordinators_own_broker_users_cannot_be_enrolled(api: Api) -> None:
    for name in (api.broker.username, f"{api.broker.username}-ingest"):
        response = api.call("POST", "/api/v1/enroll-tokens", json={"device_class": "x86-gateway", "device_id": name})
        assert response.status_code == 409 and "coordinator's own broker usernames" in response.json()["detail"]
    assert api.call("GET", "/api/v1/enroll-tokens").json() == []


def test_a_failed_broker_reload_undoes_the_enrollment(api: Api) -> None:
    broker_auth = api.security.broker_auth
    assert broker_auth is not None
    working = broker_auth.config
    token = api.enroll_token(device_id="gw-9")
    broker_auth.config = working.model_copy(update={"reload_command": ["false"]})
    response = api.enroll(token)
    assert response.status_code == 502 and "exited with 1" in response.json()["detail"]
    assert api.call("GET", "/api/v1/identities").json() == []

    broker_auth.config = working
    response = api.enroll(token)
    assert response.status_code == 200 and response.json()["device_id"] == "gw-9", "the token was not spent"


def test_revocation_cuts_a_connected_device_off(api: Api) -> None:
    enrolled = EnrollResponse.model_validate(api.enroll(api.enroll_token(device_id="gw-1")).json())
    probe = MqttProbe(api.broker.url, "gw-1", enrolled.broker.password)
    try:
        assert probe.start() == "Success"
        response = api.call("DELETE", "/api/v1/devices/gw-1")
        assert response.status_code == 200 and response.json()["status"] == "revoked"
        wait_until(lambda: probe.disconnects > 0, timeout=5, what="gw-1 disconnected")
        assert probe.connects.get(timeout=10) == "Not authorized"
    finally:
        probe.stop()
    assert isinstance(api.broker, SecuredBroker)
    assert "gw-1:" not in api.broker.auth.password_file.read_text()
    # Mosquitto publishes no last will for a revoked client; the coordinator marks it offline itself.
    wait_until(
        lambda: (api.call("GET", "/api/v1/devices/gw-1").json() or {}).get("availability") == "offline",
        timeout=5,
        what="gw-1 offline",
    )
    assert api.call("DELETE", "/api/v1/devices/nobody").status_code == 404

    # A revoked id can be enrolled again with a token naming it, with new credentials.
    again = EnrollResponse.model_validate(api.enroll(api.enroll_token(device_id="gw-1")).json())
    assert again.broker.password != enrolled.broker.password
    with MqttProbe(api.broker.url, "gw-1", again.broker.password) as fresh:
        assert fresh.start() == "Success"


def test_commands_are_signed_and_verify_on_the_device(api: Api) -> None:
    enrolled = EnrollResponse.model_validate(api.enroll(api.enroll_token(device_id="gw-1")).json())
    operator = api.token("operator")
    keys = {key_id(k): k for k in (load_public_key(p.encode()) for p in enrolled.command_keys)}
    verifier = CommandVerifier("gw-1", keys)
    with MqttProbe(api.broker.url, "gw-1", enrolled.broker.password) as device:
        assert device.start() == "Success"
        device.subscribe(topic("gw-1", Channel.COMMANDS))
        response = api.call("POST", "/api/v1/devices/gw-1/commands", operator, json={"name": "report_state"})
        assert response.status_code == 202, response.text
        message = device.next()
    command = verifier.verify(message.payload, topic=message.topic)
    assert command.name == "report_state" and command.message_id == response.json()["command_id"]

    bad = api.call("POST", "/api/v1/devices/gw-1/commands", operator, json={"name": "format_disk"})
    assert bad.status_code == 422 and "name" in bad.json()["detail"]
    # Input a signed command cannot hold, or JSON cannot carry back, is refused, never a 500.
    big = {"name": "ping", "args": {"x": "a" * 70_000}}
    huge = api.call("POST", "/api/v1/devices/gw-1/commands", operator, json=big)
    assert huge.status_code == 422 and "smaller args" in huge.json()["detail"], huge.text
    as_json = {"Authorization": f"Bearer {operator}", "content-type": "application/json"}
    body = b'{"name": "ping", "args": {"x": NaN}}'
    nan = api.http.post("/api/v1/devices/gw-1/commands", content=body, headers=as_json)
    assert nan.status_code < 500, nan.text
    body = b'{"spec": {"model": "m", "learning_rate": NaN}}'
    spec = api.http.post("/api/v1/campaigns", content=body, headers=as_json)
    assert spec.status_code == 422 and spec.json()["detail"][0]["loc"] == ["body", "spec", "learning_rate"], spec.text
    api.call("DELETE", "/api/v1/devices/gw-1")
    revoked = api.call("POST", "/api/v1/devices/gw-1/commands", operator, json={"name": "ping"})
    assert revoked.status_code == 409 and "revoked" in revoked.json()["detail"]


def test_without_broker_auth_enrollment_says_it_is_unmanaged(
    tmp_path: Path, mosquitto: LocalBroker, keys: Keys
) -> None:
    config = CoordinatorConfig(
        data_dir=tmp_path / "coord", trusted_keys=[keys.public], broker=BrokerConfig(url=mosquitto.url)
    )
    for api in _app(tmp_path, mosquitto, config, None):
        response = api.enroll(api.enroll_token("rpi5"))
        assert response.status_code == 200, response.text
        enrolled = EnrollResponse.model_validate(response.json())
        assert not enrolled.broker.managed and enrolled.broker.password is None
        assert any("unmanaged" in note for note in enrolled.notes)
        assert any("command_key" in note for note in enrolled.notes) and enrolled.command_keys == []
        no_key = api.call("POST", f"/api/v1/devices/{enrolled.device_id}/commands", json={"name": "ping"})
        assert no_key.status_code == 409 and "command_key" in no_key.json()["detail"]
