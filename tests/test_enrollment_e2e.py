"""Enrollment end to end: coordinator and agent as processes, `edgefleet agent enroll`, a broker with auth files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
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
from tests.conftest import Keys, SecuredBroker

pytestmark = pytest.mark.slow

ADMIN = "bootstrap-admin-token-0123456789"
runner = CliRunner()


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
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def coordinator(tmp_path: Path, secured_broker: SecuredBroker, keys: Keys) -> Iterator[str]:
    """`edgefleet coordinator serve` managing the broker's auth files; yields its URL."""
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
    proc = _spawn(["coordinator", "serve", "--config", str(config)], tmp_path / "coordinator.log")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_port(port, timeout=30, proc=proc)
        wait_until(lambda: httpx.get(f"{url}/healthz").json()["broker_connected"], timeout=15, what="coordinator")
        yield url
    finally:
        _stop(proc)


def _cli(*args: str) -> Any:
    result = runner.invoke(app, [*args, "--format", "json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_enrolled_agent_connects_appears_and_revocation_cuts_it_off(tmp_path: Path, coordinator: str) -> None:
    # Prepare: an operator issues a token; the device enrolls with it.
    issued = _cli("coordinator", "enroll-token", "--device-class", "x86-gateway", "--ttl", "10m",
                  "--url", coordinator, "--token", ADMIN)  # fmt: skip
    out = tmp_path / "device" / "etc" / "agent.toml"
    enroll = ["agent", "enroll", "--coordinator", coordinator, "--token", issued["token"],
              "--data-dir", str(tmp_path / "device" / "data"), "--out", str(out)]  # fmt: skip
    enrolled = _cli(*enroll)
    device_id = enrolled["device_id"]
    assert enrolled["broker_auth"] == "managed" and enrolled["command_keys"] == 1

    # The config is complete and valid; the password file is private; the keys lie beside it.
    validated = runner.invoke(app, ["agent", "validate-config", str(out)])
    assert validated.exit_code == 0, validated.output
    assert (out.parent / "broker.pass").stat().st_mode & 0o777 == 0o600
    assert sorted(p.name.split("-")[0] for p in out.parent.glob("*.pem")) == ["command", "trusted"]
    again = runner.invoke(app, [*enroll, "--force"])
    assert again.exit_code == ExitCode.ERROR and "already used" in again.output
    refused = runner.invoke(app, enroll)
    assert refused.exit_code == ExitCode.USAGE and "--force" in refused.output, "kept the existing config"

    # API tokens from the CLI: a read-only token lists identities but cannot revoke.
    reader = _cli("coordinator", "token", "create", "--role", "read-only", "--name", "dashboard",
                  "--url", coordinator, "--token", ADMIN)["token"]  # fmt: skip
    listed = _cli("coordinator", "identities", "--url", coordinator, "--token", reader)
    assert [i["device_id"] for i in listed] == [device_id]
    forbidden = runner.invoke(app, ["coordinator", "revoke", device_id, "--url", coordinator, "--token", reader])
    assert forbidden.exit_code == ExitCode.UNAUTHORIZED and "403: DELETE" in forbidden.output
    assert "needs role admin" in forbidden.output.replace("\n", "")

    # Execute: the agent runs with that config against the auth-enabled broker.
    http = httpx.Client(base_url=coordinator, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10)
    log = tmp_path / "agent.log"
    agent = _spawn(["agent", "run", "--config", str(out)], log)
    try:
        wait_until(
            lambda: (
                (d := http.get(f"/api/v1/devices/{device_id}")).status_code == 200
                and d.json()["availability"] == "online"
            ),
            timeout=30,
            what=f"{device_id} online in the coordinator",
        )
        assert http.get(f"/api/v1/devices/{device_id}").json()["device_class"] == "x86-gateway"

        # A signed command reaches the agent through the ACL'd broker; its result is stored.
        sent = http.post(f"/api/v1/devices/{device_id}/commands", json={"name": "ping"})
        assert sent.status_code == 202, sent.text
        done = wait_until(
            lambda: [c for c in http.get(f"/api/v1/devices/{device_id}/commands").json() if c["ok"] is not None],
            timeout=15,
            what="command result",
        )
        assert (done[0]["command_id"], done[0]["ok"], done[0]["detail"]) == (sent.json()["command_id"], True, "pong")

        # Revocation disconnects it and the broker refuses it from then on; the coordinator marks it offline.
        assert _cli("coordinator", "revoke", device_id, "--url", coordinator, "--token", ADMIN)["status"] == "revoked"
        wait_until(
            lambda: http.get(f"/api/v1/devices/{device_id}").json()["availability"] == "offline",
            timeout=10,
            what="offline after revocation",
        )
        wait_until(lambda: "Not authorized" in log.read_text(), timeout=15, what="reconnect refused")
        assert agent.poll() is None, "the agent keeps serving locally while cut off"
    finally:
        _stop(agent)
        http.close()


# -- the packaged device path ------------------------------------------------------------------------------------

SERVICE_USER, SERVICE_GROUP = "nobody", "nogroup"  # a non-root user every Debian has, standing in for edgefleet
EXAMPLE_CONFIG = Path(__file__).resolve().parents[1] / "packaging" / "agent.toml.example"


def _as_service_user(layout: Path, args: list[str]) -> list[str] | None:
    """The command that runs ``edgefleet ARGS`` as the service user with /run/edgefleet (the unit's
    RuntimeDirectory) at ``layout``/run/edgefleet, in a mount namespace of its own; None where this machine
    does not allow one. The interpreter may sit in a folder the user cannot enter (pyenv under /root): that
    folder is then replaced, in the namespace only, by an open one holding the interpreter's tree."""
    import shutil
    import tempfile

    from edgefleet.agent.preflight import Account

    if not (shutil.which("unshare") and shutil.which("setpriv")):
        return None
    steps = [f"mount --bind {layout / 'run'} /run"]
    prefix = Path(sys.base_prefix).resolve()
    blocked = Account.named(SERVICE_USER).reaches(prefix / "bin")
    if blocked is not None:
        top = prefix.relative_to(blocked).parts[0]  # e.g. /root blocks /root/.pyenv/versions/3.11.7
        hold = tempfile.mkdtemp(prefix="edgefleet-hold-", dir="/tmp")
        steps += [f"mount --bind {blocked}/{top} {hold}", f"mount -t tmpfs -o mode=0755 tmpfs {blocked}",
                  f"mkdir {blocked}/{top}", f"mount --bind {hold} {blocked}/{top}"]  # fmt: skip
    run = " ".join([f"setpriv --reuid={SERVICE_USER} --regid={SERVICE_GROUP} --clear-groups env HOME=/tmp",
                    sys.executable, "-m", "edgefleet", *args])  # fmt: skip
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "true"], capture_output=True)
    if probe.returncode != 0:
        return None
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", " && ".join([*steps, f"exec {run}"])]


def test_the_packaged_layout_enrolls_over_its_example_config_and_runs_as_the_service_user(
    coordinator: str,
) -> None:
    import grp
    import shutil
    import tempfile

    from edgefleet.agent.serving.client import InferenceClient

    # Prepare: the files the .deb and the unit lay out, under one open folder: the example config as the
    # conffile (root, 0644), the state dir (StateDirectory=, the user's, 0700), /run/edgefleet (0750).
    layout = Path(tempfile.mkdtemp(prefix="edgefleet-pkg-", dir="/tmp"))
    layout.chmod(0o755)
    etc, state, run = layout / "etc" / "edgefleet", layout / "var" / "lib" / "edgefleet", layout / "run" / "edgefleet"
    for folder in (etc, state, run):
        folder.mkdir(parents=True)
        for parent in [p for p in folder.parents if layout in p.parents or p == layout]:
            parent.chmod(0o755)
    shutil.copyfile(EXAMPLE_CONFIG, etc / "agent.toml")
    for folder, mode in ((state, 0o700), (run, 0o750)):
        shutil.chown(folder, SERVICE_USER, SERVICE_GROUP)
        folder.chmod(mode)
    issued = _cli("coordinator", "enroll-token", "--device-class", "x86-gateway", "--ttl", "10m",
                  "--url", coordinator, "--token", ADMIN)  # fmt: skip
    agent = None
    try:
        # Execute: enroll as root, as the README says, over the example config, without --force
        enrolled = _cli("agent", "enroll", "--coordinator", coordinator, "--token", issued["token"], "--data-dir",
                        str(state), "--out", str(etc / "agent.toml"), "--service-user", SERVICE_USER)  # fmt: skip

        # Assert: a config the unit runs: the packaged socket, the secret readable by the service group only
        assert (enrolled["service_user"], enrolled["socket"]) == (SERVICE_USER, "/run/edgefleet/agent.sock")
        secret = (etc / "broker.pass").stat()
        assert (secret.st_uid, grp.getgrgid(secret.st_gid).gr_name, secret.st_mode & 0o777) == (0, SERVICE_GROUP, 0o640)
        checked = runner.invoke(app, ["agent", "validate-config", str(etc / "agent.toml"), "--as-user", SERVICE_USER])
        assert checked.exit_code == 0, checked.output
        (etc / "broker.pass").chmod(0o600)  # what enroll wrote before: the service user cannot read it
        refused = runner.invoke(app, ["agent", "validate-config", str(etc / "agent.toml"), "--as-user", SERVICE_USER])
        assert refused.exit_code == ExitCode.CONFIG_INVALID
        assert f"broker password_file {etc / 'broker.pass'}: not readable by {SERVICE_USER}" in refused.output
        (etc / "broker.pass").chmod(0o640)

        # The agent runs as the service user with those files, reaches the broker, serves its socket
        command = _as_service_user(layout, ["agent", "run", "--config", str(etc / "agent.toml")])
        if command is None:
            pytest.skip("no mount namespace here (unshare --mount refused): cannot run the agent as another user")
        with open(layout / "agent.log", "ab") as log:
            agent = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                     env=os.environ | {"PYTHONUNBUFFERED": "1"})  # fmt: skip
        http = httpx.Client(base_url=coordinator, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10)
        wait_until(
            lambda: agent.poll() is not None or (
                (d := http.get(f"/api/v1/devices/{enrolled['device_id']}")).status_code == 200
                and d.json()["availability"] == "online"
            ),
            timeout=60, what="the packaged agent online",
        )  # fmt: skip
        assert agent.poll() is None, (layout / "agent.log").read_text()[-3000:]
        wait_until(lambda: (run / "agent.sock").exists(), timeout=30, what="the socket in /run/edgefleet")
        with InferenceClient(f"unix://{run / 'agent.sock'}") as client:
            assert client.model_info().loaded is False  # it answers; nothing deployed yet
        import psutil

        assert psutil.Process(agent.pid).username() == SERVICE_USER
        assert (state / "outbox.db").exists() or any(state.iterdir())  # it wrote its state where the unit says
    finally:
        if agent is not None:
            _stop(agent)
        shutil.rmtree(layout, ignore_errors=True)
