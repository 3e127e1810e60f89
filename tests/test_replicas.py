"""Coordinator replicas on one PostgreSQL store and one Mosquitto: real processes all of them.

The API answers on every replica; one leads (PostgreSQL advisory lock) and runs the rollout engine
and retention; telemetry and chunk requests are shared among them (MQTT shared subscriptions).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.publish as publish
import paho.mqtt.subscribe as subscribe
import pytest

from edgefleet.local.broker import LocalBroker, free_port, wait_for_port
from edgefleet.local.fleet import LocalFleet, wait_until, write_toml
from edgefleet.protocol.messages import Telemetry
from edgefleet.protocol.topics import COORDINATOR_STATUS, Channel, topic
from tests.conftest import DigitsModels, Keys, build

pytestmark = pytest.mark.slow

TOKEN = "replica-token-0123456789"


@dataclass
class Replica:
    name: str
    port: int
    proc: subprocess.Popen[bytes]

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=f"http://127.0.0.1:{self.port}", headers={"Authorization": f"Bearer {TOKEN}"},
                            timeout=30)  # fmt: skip

    def get(self, path: str) -> Any:
        with self.http() as client:
            response = client.get(path)
            response.raise_for_status()
            return response.json()

    def alive(self) -> bool:
        return self.proc.poll() is None


class Replicas:
    def __init__(self, workdir: Path, broker: LocalBroker, keys: Keys, store_url: str) -> None:
        self.workdir, self.broker, self.keys, self.store_url = workdir, broker, keys, store_url
        self.shared = workdir / "shared"  # the blob store every replica reads and writes
        self.all: list[Replica] = []

    def start(self, count: int) -> list[Replica]:
        started = [self._spawn(f"coord-{len(self.all) + n}") for n in range(count)]
        for replica in started:
            wait_for_port(replica.port, timeout=60, proc=replica.proc)
            wait_until(lambda r=replica: r.get("/healthz")["broker_connected"], timeout=30, what=f"{replica.name} up")
        self.all += started
        return started

    def _spawn(self, name: str) -> Replica:
        port = free_port()
        config = write_toml(self.workdir / f"{name}.toml", {
            "data_dir": str(self.shared), "trusted_keys": [str(self.keys.public)], "client_id": name,
            "replica_group": "fleet", "store": {"url": self.store_url},
            "broker": {"url": self.broker.url}, "api": {"host": "127.0.0.1", "port": port, "token": TOKEN},
        })  # fmt: skip
        log = open(self.workdir / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child
        proc = subprocess.Popen([sys.executable, "-m", "edgefleet", "coordinator", "serve", "--config", str(config)],
                                stdout=log, stderr=subprocess.STDOUT, env=os.environ | {"PYTHONUNBUFFERED": "1"},
                                start_new_session=True)  # fmt: skip
        log.close()
        return Replica(name, port, proc)

    def living(self) -> list[Replica]:
        return [r for r in self.all if r.alive()]

    def leaders(self) -> list[Replica]:
        return [r for r in self.living() if r.get("/healthz")["leader"]]

    def the_leader(self, timeout: float = 20) -> Replica:
        leaders = wait_until(lambda: (found := self.leaders()) and len(found) == 1 and found, timeout=timeout,
                             what="exactly one leading replica")  # fmt: skip
        return leaders[0]

    def stop(self) -> None:
        for replica in self.all:
            if replica.alive():
                replica.proc.send_signal(signal.SIGTERM)
        for replica in self.all:
            try:
                replica.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                replica.proc.kill()
                replica.proc.wait()


@pytest.fixture
def replicas(tmp_path: Path, mosquitto: LocalBroker, keys: Keys, postgres_url: str) -> Iterator[Replicas]:
    group = Replicas(tmp_path, mosquitto, keys, postgres_url)
    yield group
    group.stop()


def test_the_leader_killed_mid_rollout_hands_over_and_the_rollout_completes_once(
    tmp_path: Path, replicas: Replicas, fleet: LocalFleet, keys: Keys, digits: DigitsModels
) -> None:
    # Prepare: three replicas, four agents on v1
    replicas.start(3)
    leader = replicas.the_leader()
    follower = next(r for r in replicas.living() if r is not leader)
    fleet.api_port, fleet.token = follower.port, TOKEN  # the agents' helpers talk to a replica that does not lead
    devices = [f"gw-{n}" for n in range(4)]
    for device_id in devices:
        fleet.add_agent(device_id, telemetry_interval_s=1.0)
    fleet.start_agents(devices)
    fleet.wait_registered(devices)
    v1, d1 = build(digits.v1, tmp_path / "v1.bundle", keys, version="1.0.0")
    v2, d2 = build(digits.v2, tmp_path / "v2.bundle", keys, version="2.0.0", parent=d1)
    fleet.upload(v1)
    fleet.deploy(d1)
    fleet.wait_active(d1, devices)
    fleet.upload(v2)

    # Execute: a rollout created on a follower; the leader is killed once the first wave runs v2
    spec = {"model": "digits", "version": "2.0.0", "waves": ["1", "100%"], "soak_s": 2,
            "gates": {"without_evidence": "continue", "evidence_wait_s": 0}}  # fmt: skip
    with follower.http() as client:
        created = client.post("/api/v1/rollouts", json=spec)
    assert created.status_code == 201, created.text
    rollout_id = created.json()["id"]
    wait_until(lambda: any(d["state"] == "active" for d in follower.get(f"/api/v1/rollouts/{rollout_id}")
                           ["device_states"]), timeout=60, what="the first wave active")  # fmt: skip
    assert follower.get(f"/api/v1/rollouts/{rollout_id}")["status"] == "running"
    leader.proc.send_signal(signal.SIGKILL)
    leader.proc.wait(timeout=10)

    # Assert: another replica leads within seconds, and the rollout finishes, once
    successor = replicas.the_leader(timeout=20)
    assert successor is not leader
    done = wait_until(lambda: (r := follower.get(f"/api/v1/rollouts/{rollout_id}"))["status"] != "running" and r,
                      timeout=120, interval=0.5, what="the rollout to finish")  # fmt: skip
    assert done["status"] == "completed", done
    fleet.wait_active(d2, devices, timeout=60)
    kinds = [e["kind"] for e in follower.get(f"/api/v1/events?rollout_id={rollout_id}")]
    assert kinds.count("completed") == 1 and kinds.count("created") == 1, kinds
    # the killed leader's last will said "offline"; a living replica said "online" again
    status = subscribe.simple(COORDINATOR_STATUS, hostname="127.0.0.1", port=replicas.broker.port, retained=True)
    assert json.loads(status.payload)["state"] == "online"


def test_replicas_share_the_telemetry_and_store_each_report_once(replicas: Replicas, postgres_url: str) -> None:
    import psycopg

    # Prepare: two replicas in one group
    first, second = replicas.start(2)
    reports = [Telemetry(device_id=f"sim-{n % 20:02d}", window_s=1.0, inference_count=1, error_count=0)
               for n in range(2000)]  # fmt: skip
    # Execute: a burst from twenty devices, each report once, and 100 of them delivered twice
    messages = [
        {"topic": topic(r.device_id, Channel.TELEMETRY), "payload": r.to_bytes(), "qos": 1}
        for r in reports + reports[:100]
    ]
    for start in range(0, len(messages), 500):
        publish.multiple(messages[start : start + 500], hostname="127.0.0.1", port=replicas.broker.port)

    # Assert: every report stored exactly once, and both replicas stored a share
    def stored(replica: Replica) -> int:
        with replica.http() as client:
            text = client.get("/metrics").text
        match = re.search(r"^edgefleet_telemetry_reports_stored(?:_total)? (\S+)$", text, re.M)
        return int(float(match[1])) if match else 0

    wait_until(lambda: stored(first) + stored(second) >= 2000, timeout=60, what="the burst stored")
    with psycopg.connect(postgres_url) as conn:
        total, distinct = conn.execute("select count(*), count(distinct message_id) from telemetry").fetchone()  # type: ignore[misc]
    assert (total, distinct) == (2000, 2000)
    assert stored(first) + stored(second) == 2000
    assert stored(first) > 0 and stored(second) > 0, (stored(first), stored(second))
