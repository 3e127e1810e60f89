"""Who may read /metrics: a config choice, by default a token or a client on loopback."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from edgefleet.common.mqtt import BrokerConfig
from edgefleet.coordinator.api.app import create_app
from edgefleet.coordinator.config import ApiServerConfig, CoordinatorConfig
from edgefleet.coordinator.service import Coordinator
from edgefleet.local.fleet import LocalFleet
from tests.conftest import Keys

TOKEN = "metrics-admin-token-0123"


def _client(tmp_path: Path, keys: Keys, access: str) -> TestClient:
    config = CoordinatorConfig(
        data_dir=tmp_path / "c", trusted_keys=[keys.public], broker=BrokerConfig(),
        api=ApiServerConfig(metrics_access=access),  # type: ignore[arg-type]
    )  # fmt: skip
    return TestClient(create_app(Coordinator(config), token=TOKEN))  # no lifespan: no broker needed


@pytest.mark.parametrize("access", ["token", "token_or_loopback"])
def test_a_remote_client_needs_a_read_only_token(tmp_path: Path, keys: Keys, access: str) -> None:
    http = _client(tmp_path, keys, access)  # TestClient's peer is "testclient": not loopback
    assert http.get("/metrics").status_code == 401
    created = http.post("/api/v1/tokens", json={"role": "read-only", "name": "prometheus"},
                        headers={"Authorization": f"Bearer {TOKEN}"})  # fmt: skip
    assert created.status_code == 201, created.text
    answer = http.get("/metrics", headers={"Authorization": f"Bearer {created.json()['token']}"})
    assert answer.status_code == 200 and "edgefleet_fleet_devices" in answer.text


def test_public_metrics_need_no_token(tmp_path: Path, keys: Keys) -> None:
    assert _client(tmp_path, keys, "public").get("/metrics").status_code == 200


def test_by_default_a_client_on_loopback_reads_metrics_without_a_token(fleet: LocalFleet) -> None:
    url = fleet.start_coordinator()
    answer = httpx.get(f"{url}/metrics")  # no Authorization header, from 127.0.0.1
    assert answer.status_code == 200 and "edgefleet_coordinator_rejected_messages" in answer.text
    assert httpx.get(f"{url}/api/v1/devices").status_code == 401  # the rest of the API still needs a token
