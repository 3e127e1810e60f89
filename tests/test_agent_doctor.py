"""`edgefleet agent doctor` against real parts: a Mosquitto with the coordinator's auth files, a coordinator, and an
agent enrolled with it and running a deployed bundle."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from edgefleet.cli.main import app
from edgefleet.common.exit_codes import ExitCode
from edgefleet.local.broker import free_port, wait_for_port
from edgefleet.local.fleet import wait_until, write_toml
from edgefleet.protocol.signing import generate_keypair
from tests.conftest import DigitsModels, Keys, SecuredBroker, build

pytestmark = pytest.mark.slow

ADMIN = "bootstrap-admin-token-0123456789"
runner = CliRunner(mix_stderr=False)


def _spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "edgefleet", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=os.environ | {"PYTHONUNBUFFERED": "1"},
            start_new_session=True,
        )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Enrolled:
    config: Path
    device_id: str
    http: httpx.Client


@pytest.fixture
def enrolled_agent(
    tmp_path: Path, secured_broker: SecuredBroker, keys: Keys, digits: DigitsModels
) -> Iterator[Enrolled]:
    """A coordinator managing the broker's users, an agent enrolled with it (`agent enroll`) and running, and a
    bundle deployed to it and active."""
    folder = tmp_path / "coordinator"
    folder.mkdir()
    private_pem, _ = generate_keypair()
    (folder / "command.key").write_bytes(private_pem)
    (folder / "broker.pass").write_text(secured_broker.password + "\n")
    port = free_port()
    auth = secured_broker.auth
    config = write_toml(
        folder / "coordinator.toml",
        {
            "data_dir": "data",
            "trusted_keys": [str(keys.public)],
            "command_key": "command.key",
            "broker": {"url": secured_broker.url, "username": secured_broker.username, "password_file": "broker.pass"},
            "api": {"host": "127.0.0.1", "port": port, "token": ADMIN},
            "broker_auth": {
                "password_file": str(auth.password_file),
                "acl_file": str(auth.acl_file),
                "reload_command": auth.reload_command,
            },
        },
    )
    coordinator = _spawn(["coordinator", "serve", "--config", str(config)], tmp_path / "coordinator.log")
    url = f"http://127.0.0.1:{port}"
    http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30)
    agent: subprocess.Popen[bytes] | None = None
    try:
        wait_for_port(port, timeout=30, proc=coordinator)
        wait_until(lambda: http.get("/healthz").json()["broker_connected"], timeout=30, what="coordinator")
        token = _json("coordinator", "enroll-token", "--device-class", "x86-gateway", "--ttl", "10m",
                      "--url", url, "--token", ADMIN)["token"]  # fmt: skip
        out = tmp_path / "device" / "etc" / "agent.toml"
        device_id = _json("agent", "enroll", "--coordinator", url, "--token", token,
                          "--data-dir", str(tmp_path / "device" / "data"), "--out", str(out))["device_id"]  # fmt: skip
        agent = _spawn(["agent", "run", "--config", str(out)], tmp_path / "agent.log")
        wait_until(
            lambda: agent.poll() is not None or http.get(f"/api/v1/devices/{device_id}").json().get("device_class"),
            timeout=60, what=f"{device_id} registered",
        )  # fmt: skip
        assert agent.poll() is None, (tmp_path / "agent.log").read_text()[-3000:]
        bundle, _ = build(digits.v1, tmp_path / "v1.bundle", keys, version="1.0.0")
        uploaded = http.post("/api/v1/bundles", content=bundle.read_bytes())
        assert uploaded.status_code < 300, uploaded.text
        digest = uploaded.json()["digest"]
        deployed = http.post("/api/v1/deployments", json={"bundle_digest": digest, "device_ids": [device_id]})
        assert deployed.status_code < 300, deployed.text
        wait_until(
            lambda: http.get(f"/api/v1/devices/{device_id}").json().get("active_digest") == digest,
            timeout=60, what=f"{device_id} to run {digest[:12]}",
        )  # fmt: skip
        yield Enrolled(out, device_id, http)
    finally:
        if agent is not None:
            _stop(agent)
        _stop(coordinator)
        http.close()


def _json(*args: str) -> Any:
    result = runner.invoke(app, [*args, "--format", "json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _doctor(config: Path) -> tuple[int, dict[str, Any]]:
    result = runner.invoke(app, ["agent", "doctor", "--config", str(config), "--format", "json"])
    assert result.stdout, result.output
    report = json.loads(result.stdout)
    return result.exit_code, {c["check"]: c for c in report["checks"]}


def test_doctor_finds_all_ok_then_names_a_refused_login_and_an_unreachable_broker(
    enrolled_agent: Enrolled, secured_broker: SecuredBroker
) -> None:
    # Execute: the doctor on the enrolled, running agent's own config
    code, checks = _doctor(enrolled_agent.config)

    # Assert: every check ok, each saying what it found
    assert code == 0, json.dumps(checks, indent=1)
    assert all(c["status"] == "ok" for c in checks.values()), json.dumps(checks, indent=1)
    assert set(checks) == {"agent", "broker", "coordinator", "desired state", "active bundle", "runtime", "outbox",
                           "clock"}  # fmt: skip
    assert f"logged in as {enrolled_agent.device_id!r}" in checks["broker"]["detail"]
    assert checks["coordinator"]["detail"].startswith("online")
    assert "digits 1.0.0" in checks["active bundle"]["detail"] and "signature" in checks["active bundle"]["detail"]
    assert checks["desired state"]["detail"].endswith(": active")
    assert "onnxruntime-cpu" in checks["runtime"]["detail"]
    status = _json("agent", "status", "--config", str(enrolled_agent.config))  # its socket, from the config
    assert (status["loaded"], status["model"], status["version"]) == (True, "digits", "1.0.0")

    # Prepare: the same config with a wrong broker password
    folder = enrolled_agent.config.parent
    (folder / "wrong.pass").write_text("not-the-password\n")
    wrong = folder / "agent-wrong-password.toml"
    wrong.write_text(enrolled_agent.config.read_text().replace('"broker.pass"', '"wrong.pass"'))
    assert '"wrong.pass"' in wrong.read_text()

    # Execute / Assert: the login is named as refused; exit 6
    code, checks = _doctor(wrong)
    assert code == ExitCode.UNREACHABLE, json.dumps(checks, indent=1)
    broker = checks["broker"]
    assert broker["status"] == "problem"
    assert f"the broker refused the login of user {enrolled_agent.device_id!r}" in broker["detail"], broker
    assert "authori" in broker["detail"].lower(), broker
    assert checks["active bundle"]["status"] == "ok", "the device's own state is still checked"

    # Execute / Assert: with the broker stopped, it is named unreachable; exit 6
    port = secured_broker.broker.port
    secured_broker.broker.stop()
    code, checks = _doctor(enrolled_agent.config)
    assert code == ExitCode.UNREACHABLE, json.dumps(checks, indent=1)
    assert checks["broker"]["status"] == "problem"
    assert f"cannot connect to 127.0.0.1:{port}" in checks["broker"]["detail"], checks["broker"]
    assert "refused" in checks["broker"]["detail"].lower(), checks["broker"]
    assert checks["coordinator"]["detail"] == "not checked: no connection to the broker"
    assert checks["agent"]["status"] == "ok", "the agent still serves locally"

    # Execute / Assert: a stored file of the active bundle altered on disk fails its hash
    data_dir = Path(tomllib.loads(enrolled_agent.config.read_text())["data_dir"])
    blob = next((data_dir / "store" / "blobs").iterdir())
    blob.write_bytes(blob.read_bytes() + b"\0")
    _code, checks = _doctor(enrolled_agent.config)
    assert checks["active bundle"]["status"] == "problem"
    assert "fails verification" in checks["active bundle"]["detail"], checks["active bundle"]


def test_agent_status_asks_the_packaged_socket_by_default() -> None:
    if Path("/run/edgefleet/agent.sock").exists():
        pytest.skip("an agent runs here at the packaged socket")
    result = runner.invoke(app, ["agent", "status", "--format", "json"])
    assert result.exit_code == ExitCode.UNREACHABLE, result.output
    assert json.loads(result.stderr)["error"].startswith("unix:///run/edgefleet/agent.sock: "), result.stderr
