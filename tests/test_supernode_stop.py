"""Stopping while a Flower SuperNode is still starting: the stop reaches the child at once and leaves nothing
behind (the agent's unit gives it TimeoutStopSec=30)."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import paho.mqtt.publish as publish
import psutil
import pytest

from edgefleet.common.flower_processes import DeploymentError, SuperNodeProcess, free_port
from edgefleet.local.broker import LocalBroker
from edgefleet.local.fleet import LocalFleet, wait_until
from edgefleet.protocol.messages import CampaignAssignment
from edgefleet.protocol.topics import Channel, topic

pytestmark = pytest.mark.slow

UNIT_STOP_TIMEOUT_S = 30.0  # packaging/systemd/edgefleet-agent.service.in: TimeoutStopSec=30
WELL_INSIDE_S = 10.0  # a loaded 2-core machine stops an idle agent in 1-3 s


def _supernodes(superlink: str) -> list[psutil.Process]:
    """Live flower-supernode processes pointed at ``superlink`` (a port of this test's own): zombies are dead."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmdline = proc.info["cmdline"] or []
        if proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        if any(part.endswith("flower-supernode") for part in cmdline[:2]) and superlink in cmdline:
            found.append(proc)
    return found


def test_sigterm_while_the_supernode_starts_stops_the_agent_quickly_and_leaves_no_supernode(
    fleet: LocalFleet, mosquitto: LocalBroker
) -> None:
    # Prepare: an agent assigned a campaign whose SuperLink does not answer, so its SuperNode keeps registering
    # (for up to its startup timeout, far longer than the unit's stop timeout)
    superlink = f"127.0.0.1:{free_port()}"
    fleet.add_agent("gw-1", federated={"startup_timeout_s": 300, "max_restarts": 0})
    agent = fleet.start_agent("gw-1")
    assert agent.proc is not None
    assignment = CampaignAssignment(device_id="gw-1", campaign_id="c1", superlink=superlink)
    publish.single(topic("gw-1", Channel.CAMPAIGN), assignment.to_bytes(), qos=1, retain=True,
                   hostname="127.0.0.1", port=mosquitto.port)  # fmt: skip
    starting = wait_until(lambda: _supernodes(superlink), timeout=60, what="flower-supernode started")
    assert "registered" not in (fleet.workdir / "gw-1.log").read_text(), "still starting"

    # Execute: the unit's stop
    began = time.monotonic()
    agent.proc.send_signal(signal.SIGTERM)
    try:
        code = agent.proc.wait(timeout=UNIT_STOP_TIMEOUT_S + 5)
    finally:
        took = time.monotonic() - began
        leftovers = _supernodes(superlink)
        for proc in leftovers:  # do not leave them to the next test
            proc.kill()

    # Assert: it finished well inside the stop timeout, cleanly, and took its SuperNode with it
    assert took < WELL_INSIDE_S, f"stop took {took:.1f} s"
    assert code == 0
    assert not leftovers, f"orphaned: {[p.pid for p in leftovers]} (started as {[p.pid for p in starting]})"


def test_stop_from_another_thread_ends_a_supernode_start_at_once(tmp_path: Path) -> None:
    # Prepare: a SuperNode registering with a SuperLink that does not answer, its start() in a thread
    superlink = f"127.0.0.1:{free_port()}"
    node = SuperNodeProcess(superlink, {"node-name": "a"}, tmp_path / "node", startup_timeout_s=300)
    outcome: list[BaseException | None] = []

    def start() -> None:
        try:
            node.start()
            outcome.append(None)
        except DeploymentError as exc:
            outcome.append(exc)

    starter = threading.Thread(target=start, name="start-supernode")
    starter.start()
    try:
        wait_until(lambda: node.pid is not None and _supernodes(superlink), timeout=60, what="flower-supernode")

        # Execute
        began = time.monotonic()
        node.stop()
        starter.join(timeout=UNIT_STOP_TIMEOUT_S)
        took = time.monotonic() - began
    finally:
        node.stop()
        starter.join(timeout=UNIT_STOP_TIMEOUT_S)

    # Assert: start() gave up at once with the reason, and the child and its group are gone
    assert not starter.is_alive() and took < WELL_INSIDE_S, f"start() still waiting after {took:.1f} s"
    assert isinstance(outcome[0], DeploymentError) and "stopped while not yet registered" in outcome[0].reason
    assert not _supernodes(superlink)
    assert not node.is_running()


def test_a_stopped_supernode_is_never_spawned(tmp_path: Path) -> None:
    node = SuperNodeProcess(f"127.0.0.1:{free_port()}", {"node-name": "a"}, tmp_path / "node")
    node.stop()  # e.g. the agent was told to stop before its worker reached start()
    with pytest.raises(DeploymentError, match="stopped before it started"):
        node.start()
    assert node.pid is None
