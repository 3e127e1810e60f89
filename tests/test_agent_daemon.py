"""The agent as a daemon, in its own process: update lock, crash-loop revert, reload, systemd notify."""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

import paho.mqtt.publish as publish
import pytest

from edgefleet.agent.serving.client import InferenceClient
from edgefleet.local.broker import LocalBroker, free_port
from edgefleet.local.fleet import LocalFleet, wait_until
from edgefleet.protocol.grpc_gen import inference_pb2, inference_pb2_grpc
from edgefleet.protocol.messages import CampaignAssignment
from edgefleet.protocol.topics import Channel, topic
from tests.conftest import DigitsModels, Keys, build

pytestmark = pytest.mark.slow


def _reported(fleet: LocalFleet, device_id: str) -> dict:
    device = fleet.device(device_id)
    return dict((device or {}).get("reported") or {})


def _serving(fleet: LocalFleet, device_id: str) -> str:
    with InferenceClient(fleet.agents[device_id].target) as client:
        return client.model_info().bundle_digest


def _two_versions(
    fleet: LocalFleet, tmp_path: Path, keys: Keys, digits: DigitsModels, device_id: str
) -> tuple[str, str]:
    v1, d1 = build(digits.v1, tmp_path / "v1.bundle", keys, version="1.0.0")
    v2, d2 = build(digits.v2, tmp_path / "v2.bundle", keys, version="2.0.0")
    fleet.upload(v1)
    fleet.upload(v2)
    fleet.deploy(d1, [device_id])
    fleet.wait_active(d1, [device_id])
    return d1, d2


def _start(fleet: LocalFleet, device_id: str, **settings: object) -> None:
    fleet.start_coordinator()
    fleet.add_agent(device_id, **settings)
    fleet.start_agent(device_id)
    wait_until(lambda: fleet.device(device_id), timeout=20, what="agent registered")


def test_activation_waits_while_an_app_holds_the_update_lock(
    tmp_path: Path, fleet: LocalFleet, keys: Keys, digits: DigitsModels
) -> None:
    _start(fleet, "gw-1")
    d1, d2 = _two_versions(fleet, tmp_path, keys, digits, "gw-1")
    with InferenceClient(fleet.agents["gw-1"].target) as client:
        stub = inference_pb2_grpc.InferenceStub(client.channel)
        held = stub.AcquireUpdateLock(inference_pb2.AcquireLockRequest(holder="line-camera", ttl_s=60))
        fleet.deploy(d2, ["gw-1"])
        wait_until(lambda: _reported(fleet, "gw-1").get("status") == "waiting_for_lock", what="waiting for lock")
        assert _serving(fleet, "gw-1") == d1, "the old model serves while the lock is held"
        stub.ReleaseUpdateLock(inference_pb2.ReleaseLockRequest(lock_id=held.lock_id))
    fleet.wait_active(d2, ["gw-1"], timeout=20)


def test_a_crash_loop_after_activation_reverts_to_the_previous_bundle(
    tmp_path: Path, fleet: LocalFleet, keys: Keys, digits: DigitsModels
) -> None:
    _start(fleet, "gw-1")
    d1, d2 = _two_versions(fleet, tmp_path, keys, digits, "gw-1")
    fleet.deploy(d2, ["gw-1"])
    fleet.wait_active(d2, ["gw-1"])
    # The process dies (SIGKILL: as an OOM kill or a segfault would) three times in a row.
    for _ in range(3):
        fleet.stop_agent("gw-1", signal.SIGKILL)
        fleet.start_agent("gw-1")
    assert _serving(fleet, "gw-1") == d1
    state = wait_until(
        lambda: (s := _reported(fleet, "gw-1")).get("active", {}).get("digest") == d1 and s, what="revert reported"
    )
    assert "crash loop" in state["last_error"]["reason"] and state["last_error"]["bundle_digest"] == d2
    # The desired state still names d2; the agent does not activate it again for that revision.
    fleet.stop_agent("gw-1", signal.SIGTERM)
    fleet.start_agent("gw-1")
    assert _serving(fleet, "gw-1") == d1


def test_sighup_reloads_trusted_keys(
    tmp_path: Path, fleet: LocalFleet, keys: Keys, other_keys: Keys, digits: DigitsModels
) -> None:
    fleet.start_coordinator(trusted_keys=[keys.public, other_keys.public])
    agent = fleet.add_agent("gw-1")
    fleet.start_agent("gw-1")
    wait_until(lambda: fleet.device("gw-1"), timeout=20, what="agent registered")
    bundle, digest = build(digits.v1, tmp_path / "other.bundle", other_keys, version="1.0.0")
    fleet.upload(bundle)
    fleet.deploy(digest, ["gw-1"])
    wait_until(
        lambda: "not trusted" in ((_reported(fleet, "gw-1").get("last_error") or {}).get("reason") or ""),
        what="refusal",
    )

    text = agent.config.read_text().replace(
        f'trusted_keys = ["{keys.public}"]', f'trusted_keys = ["{keys.public}", "{other_keys.public}"]'
    )
    agent.config.write_text(text)
    assert agent.proc is not None
    agent.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "config reloaded" in (fleet.workdir / "gw-1.log").read_text(), what="reload")
    fleet.deploy(digest, ["gw-1"])  # a new revision: the agent tries again with the new keys
    fleet.wait_active(digest, ["gw-1"], timeout=20)


def test_under_systemd_the_agent_notifies_ready(
    tmp_path: Path, fleet: LocalFleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(30)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        monkeypatch.setenv("WATCHDOG_USEC", "1000000")  # 1 s: pings every 0.5 s
        fleet.add_agent("gw-1")
        fleet.start_agent("gw-1")
        messages = [sock.recv(4096).decode() for _ in range(3)]
    assert messages[0].startswith("READY=1\nSTATUS=serving no model")
    assert "WATCHDOG=1" in messages[1:]
    assert os.environ.get("NOTIFY_SOCKET") == str(path)


def test_a_campaign_assignment_runs_a_supernode_and_reports_why_it_could_not(
    fleet: LocalFleet, mosquitto: LocalBroker
) -> None:
    # Prepare: an agent, and a campaign whose SuperLink address answers nothing
    _start(fleet, "gw-1", federated={"startup_timeout_s": 5, "max_restarts": 0})
    assert _reported(fleet, "gw-1")["training_samples"] == 0
    assignment = CampaignAssignment(device_id="gw-1", campaign_id="c1", superlink=f"127.0.0.1:{free_port()}")
    # Execute: the coordinator's retained assignment
    publish.single(topic("gw-1", Channel.CAMPAIGN), assignment.to_bytes(), qos=1, retain=True,
                   hostname="127.0.0.1", port=mosquitto.port)  # fmt: skip
    # Assert: the agent tried, gave up after its startup timeout and says why; it still serves
    wait_until(
        lambda: "SuperNode did not start" in ((_reported(fleet, "gw-1").get("last_error") or {}).get("reason") or ""),
        timeout=60,
        what="the failed SuperNode reported",
    )
    assert _reported(fleet, "gw-1")["campaign"] is None
    assert _reported(fleet, "gw-1")["status"] in ("idle", "ready")
