"""Registry stages, production rollback, device labels and schema migrations (in-process coordinator)."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.publish as publish
import pytest
from fastapi.testclient import TestClient

from edgefleet.common.exit_codes import ExitCode
from edgefleet.common.mqtt import BrokerConfig
from edgefleet.coordinator.api.app import create_app
from edgefleet.coordinator.config import CoordinatorConfig
from edgefleet.coordinator.service import Coordinator
from edgefleet.coordinator.store.migrations import StoreTooNew
from edgefleet.coordinator.store.sqlite import SQLiteStore
from edgefleet.local.broker import LocalBroker
from edgefleet.local.fleet import wait_until, write_toml
from edgefleet.protocol.messages import ReportedState
from edgefleet.protocol.signing import generate_keypair
from edgefleet.protocol.topics import Channel, topic
from tests.conftest import DigitsModels, Keys, build

TOKEN = "registry-token-0123456789"


@pytest.fixture
def http(tmp_path: Path, mosquitto: LocalBroker, keys: Keys) -> Iterator[TestClient]:
    config = CoordinatorConfig(
        data_dir=tmp_path / "c", trusted_keys=[keys.public], broker=BrokerConfig(url=mosquitto.url)
    )
    with TestClient(create_app(Coordinator(config), token=TOKEN), headers={"Authorization": f"Bearer {TOKEN}"}) as c:
        yield c


def _upload(http: TestClient, tmp_path: Path, keys: Keys, model: Path, version: str, device_class: str) -> str:
    bundle, digest = build(
        model, tmp_path / f"{version}-{device_class}.bundle", keys, version=version, device_class=device_class
    )
    assert http.post("/api/v1/bundles", content=bundle.read_bytes()).status_code == 201
    return digest


def test_versions_move_through_stages_and_production_rolls_back(
    http: TestClient, tmp_path: Path, keys: Keys, digits: DigitsModels
) -> None:
    _upload(http, tmp_path, keys, digits.v1, "1.0.0", "x86-gateway")
    _upload(http, tmp_path, keys, digits.v1, "1.0.0", "rpi4")
    _upload(http, tmp_path, keys, digits.v2, "2.0.0", "x86-gateway")
    model = http.get("/api/v1/models/digits").json()
    assert [v["version"] for v in model["versions"]] == ["1.0.0", "2.0.0"]
    assert {b["device_class"] for b in model["versions"][0]["bundles"]} == {"x86-gateway", "rpi4"}
    assert model["production"] is None and model["versions"][0]["stage"] == "staging"

    def promote(version: str) -> dict:
        response = http.post(f"/api/v1/models/digits/versions/{version}/stage", json={"stage": "production"})
        assert response.status_code == 200, response.text
        return dict(response.json())

    assert promote("1.0.0")["production"] == "1.0.0"
    after = promote("2.0.0")
    assert after["production"] == "2.0.0"
    assert {v["version"]: v["stage"] for v in after["versions"]} == {"1.0.0": "archived", "2.0.0": "production"}
    rolled = http.post("/api/v1/models/digits/rollback").json()
    assert rolled["production"] == "1.0.0"
    assert [h["stage"] for h in http.get("/api/v1/models/digits/history").json()][-2:] == ["archived", "production"]

    assert http.post("/api/v1/models/digits/versions/9.9/stage", json={"stage": "production"}).status_code == 404
    assert http.post("/api/v1/models/digits/versions/1.0.0/stage", json={"stage": "gold"}).status_code == 422
    assert http.get("/api/v1/models/nope").status_code == 404


def test_devices_carry_tags_and_groups_and_filter_by_them(http: TestClient, mosquitto: LocalBroker) -> None:
    wait_until(lambda: http.get("/healthz").json()["broker_connected"], what="coordinator on the broker")
    for device_id, device_class in (("a", "rpi4"), ("b", "rpi4"), ("c", "x86-gateway")):
        state = ReportedState(
            device_id=device_id, device_class=device_class, agent_version="t", status="idle",
            started_at="2026-01-01T00:00:00Z",
        )  # fmt: skip
        publish.single(
            topic(device_id, Channel.REPORTED),
            state.to_bytes(),
            qos=1,
            retain=True,  # as agents publish it
            hostname="127.0.0.1",
            port=mosquitto.port,
        )
    wait_until(lambda: len(http.get("/api/v1/devices").json()) == 3, what="devices")
    assert (
        http.put("/api/v1/devices/a/labels", json={"tags": ["line-1", "canary"], "group": "plant-north"}).status_code
        == 200
    )
    assert http.put("/api/v1/devices/c/labels", json={"tags": ["line-1"]}).status_code == 200
    ids = lambda query: [d["device_id"] for d in http.get(f"/api/v1/devices{query}").json()]  # noqa: E731
    assert ids("?tag=line-1") == ["a", "c"]
    assert ids("?group=plant-north") == ["a"]
    assert ids("?device_class=rpi4&tag=canary") == ["a"]
    assert http.put("/api/v1/devices/zz/labels", json={"tags": []}).status_code == 404


def test_migrations_upgrade_an_old_database_in_place(tmp_path: Path) -> None:
    path = tmp_path / "fleet.db"
    old = sqlite3.connect(path)
    old.execute("create table devices (device_id text primary key, device_class text, reported text)")
    old.execute("insert into devices values ('pi-1', 'rpi4', null)")
    old.commit()
    old.close()
    db = SQLiteStore(path)
    device = db.device("pi-1")
    assert device is not None and device["tags"] == [] and device["group"] is None
    assert sqlite3.connect(path).execute("pragma user_version").fetchone()[0] == SQLiteStore.SCHEMA_VERSION
    SQLiteStore(path)  # idempotent at the current version
    newer = sqlite3.connect(path)
    newer.execute("pragma user_version = 99")
    newer.commit()
    with pytest.raises(StoreTooNew, match="newer than this coordinator"):
        SQLiteStore(path)
    # and `coordinator serve` says so, exits 3 (the config names a store it cannot use), no traceback
    (tmp_path / "k.pub").write_bytes(generate_keypair()[1])
    config = write_toml(
        tmp_path / "coordinator.toml", {"data_dir": str(tmp_path), "trusted_keys": [str(tmp_path / "k.pub")]}
    )
    result = subprocess.run([sys.executable, "-m", "edgefleet", "coordinator", "serve", "--config", str(config)],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == ExitCode.CONFIG_INVALID, result.stderr
    assert "schema 99 is newer than this coordinator" in result.stderr and "Traceback" not in result.stderr
