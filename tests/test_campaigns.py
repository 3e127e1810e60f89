"""Campaigns from the coordinator: REST lifecycle, device selection, progress, abort, and the result
registered as a staged model version with lineage and a privacy report (in-process engine)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import paho.mqtt.publish as publish
import pytest
from fastapi.testclient import TestClient

from edgefleet.common.mqtt import BrokerConfig
from edgefleet.coordinator.api.app import create_app
from edgefleet.coordinator.campaigns.engines import InProcessEngine
from edgefleet.coordinator.config import CampaignsConfig, CoordinatorConfig
from edgefleet.coordinator.service import Coordinator
from edgefleet.federated.client.data import dirichlet_split, fill_sample_store
from edgefleet.local.broker import LocalBroker
from edgefleet.local.digits import load_digits_data
from edgefleet.local.fleet import wait_until
from edgefleet.protocol.bundle import Manifest
from edgefleet.protocol.messages import Availability, ReportedState
from edgefleet.protocol.topics import Channel, topic
from tests.conftest import DigitsModels, Keys, build

TOKEN = "campaign-token-0123456789"
DEVICES = ["d0", "d1", "d2", "d3"]


@pytest.fixture(scope="module")
def data():  # type: ignore[no-untyped-def]
    return load_digits_data()


@pytest.fixture
def stores(tmp_path: Path, data) -> dict[str, Path]:  # type: ignore[no-untyped-def]
    out = {}
    for device, idx in zip(DEVICES, dirichlet_split(data.y_train, len(DEVICES), alpha=1.0, seed=2), strict=True):
        out[device] = tmp_path / f"{device}-samples.db"
        fill_sample_store(out[device], data.x_train[idx], data.y_train[idx], input_name="pixels")
    return out


@pytest.fixture
def coordinator(tmp_path: Path, mosquitto: LocalBroker, keys: Keys, stores: dict[str, Path]) -> Iterator[Coordinator]:
    config = CoordinatorConfig(
        data_dir=tmp_path / "c",
        trusted_keys=[keys.public],
        broker=BrokerConfig(url=mosquitto.url),
        campaigns=CampaignsConfig(signing_key=keys.private, engine="none"),
    )
    service = Coordinator(config)
    assert service.campaigns is not None
    service.campaigns.engine = InProcessEngine(
        lambda device: {"samples-db": str(stores[device]), "state-dir": str(tmp_path / "state" / device)}
    )
    yield service


@pytest.fixture
def http(coordinator: Coordinator) -> Iterator[TestClient]:
    with TestClient(create_app(coordinator, token=TOKEN), headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        yield client


def _report(mosquitto: LocalBroker, device: str, *, samples: int, status: str = "ready", online: bool = True) -> None:
    state = ReportedState(device_id=device, device_class="rpi5", agent_version="test", status=status,  # type: ignore[arg-type]
                          training_samples=samples, started_at=time.time())  # type: ignore[arg-type]  # fmt: skip
    availability = Availability(device_id=device, state="online" if online else "offline")
    for channel, message in ((Channel.REPORTED, state), (Channel.AVAILABILITY, availability)):
        publish.single(topic(device, channel), message.to_bytes(), qos=1, retain=True,
                       hostname="127.0.0.1", port=mosquitto.port)  # fmt: skip


def _setup(http: TestClient, tmp_path: Path, keys: Keys, digits: DigitsModels, mosquitto: LocalBroker, data) -> Path:  # type: ignore[no-untyped-def]
    bundle, _ = build(digits.v1, tmp_path / "base.bundle", keys, version="1.0", device_class="rpi5")
    assert http.post("/api/v1/bundles", content=bundle.read_bytes()).status_code == 201
    for device in DEVICES[:3]:
        _report(mosquitto, device, samples=300)
    _report(mosquitto, "d3", samples=300, online=False)
    _report(mosquitto, "few", samples=3)
    wait_until(lambda: len(http.get("/api/v1/devices").json()) == 5, 10, what="devices reported")
    wait_until(lambda: http.get("/api/v1/devices/d3").json().get("availability") == "offline", 10, what="d3 offline")
    validation = tmp_path / "validation.npz"
    np.savez(validation, pixels=data.x_test, label=data.y_test)
    return validation


def _spec(validation: Path, **over: Any) -> dict[str, Any]:
    return {
        "model": "digits", "base_version": "1.0", "architecture": "mlp",
        "architecture_args": {"sizes": [64, 32, 10]}, "input_name": "pixels", "rounds": 3, "min_clients": 2,
        "max_clients": 3, "min_samples": 20, "local_epochs": 1, "batch_size": 32, "learning_rate": 0.1,
        "validation_data": str(validation),
        "privacy": {"mode": "local", "noise_multiplier": 1.0, "clip_norm": 1.0, "delta": 1e-5, "max_epsilon": 8.0},
    } | over  # fmt: skip


def _wait_final(http: TestClient, campaign_id: str, timeout: float = 120) -> dict[str, Any]:
    final = {"completed", "failed", "aborted", "budget_exhausted"}
    wait_until(
        lambda: http.get(f"/api/v1/campaigns/{campaign_id}").json()["status"] in final, timeout, what="campaign end"
    )
    return dict(http.get(f"/api/v1/campaigns/{campaign_id}").json())


def test_campaign_trains_on_eligible_devices_and_registers_a_staged_version(
    http: TestClient,
    tmp_path: Path,
    keys: Keys,
    digits: DigitsModels,
    mosquitto: LocalBroker,
    data,  # type: ignore[no-untyped-def]
) -> None:
    # Prepare
    validation = _setup(http, tmp_path, keys, digits, mosquitto, data)
    # Execute
    created = http.post("/api/v1/campaigns", json={"spec": _spec(validation), "target": {"device_class": "rpi5"}})
    assert created.status_code == 201, created.text
    campaign_id = created.json()["id"]
    started = http.post(f"/api/v1/campaigns/{campaign_id}/start")
    assert started.status_code == 200, started.text
    result = _wait_final(http, campaign_id)
    # Assert: only online, ready devices with enough samples took part
    assert result["status"] == "completed", result["reason"]
    assert sorted(result["devices"]) == ["d0", "d1", "d2"]
    assert [r["round"] for r in result["history"]] == [1, 2, 3]
    assert all(len(r["participants"]) == 3 for r in result["history"])
    privacy = result["privacy"]
    assert privacy["mode"] == "local" and privacy["unit"] == "sample" and privacy["clients"] == 3
    assert 0 < privacy["epsilon"] <= 8.0 and privacy["epsilon"] == pytest.approx(result["epsilon"])
    # The new version is in the registry, in staging, with lineage and the privacy report in its manifest.
    version = result["result_version"]
    model = http.get("/api/v1/models/digits").json()
    staged = next(v for v in model["versions"] if v["version"] == version)
    assert staged["stage"] == "staging" and staged["lineage"]["campaign"] == campaign_id
    digest = staged["bundles"][0]["digest"]
    manifest = Manifest.model_validate_json(http.get(f"/api/v1/bundles/{digest}").json()["manifest"])
    assert manifest.privacy is not None and manifest.privacy.epsilon == pytest.approx(privacy["epsilon"])
    # What travels beside the protected update is listed with whether the guarantee covers it
    disclosed = {d.name: d.covered for d in manifest.privacy.disclosed}
    assert disclosed and disclosed.get("training_samples") is False, disclosed
    assert manifest.lineage is not None and manifest.lineage.parent_version == "1.0"
    assert manifest.metrics["federated_accuracy"] == pytest.approx(result["evaluation"]["accuracy"])
    # And it is a working model: the registry's bytes run in ONNX Runtime with the reported accuracy.
    blob = tmp_path / "c" / "blobs" / manifest.files[0].sha256
    session = ort.InferenceSession(str(blob), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"pixels": data.x_test})[0]
    assert float((logits.argmax(1) == data.y_test).mean()) == pytest.approx(result["evaluation"]["accuracy"], abs=1e-6)


def test_campaign_refuses_to_start_without_enough_eligible_devices(
    http: TestClient,
    tmp_path: Path,
    keys: Keys,
    digits: DigitsModels,
    mosquitto: LocalBroker,
    data,  # type: ignore[no-untyped-def]
) -> None:
    validation = _setup(http, tmp_path, keys, digits, mosquitto, data)
    body = {"spec": _spec(validation, min_clients=4, max_clients=4), "start": True}
    response = http.post("/api/v1/campaigns", json=body)
    assert response.status_code == 409
    detail = response.json()["detail"]
    assert "3 eligible devices, the campaign needs 4" in detail
    assert "d3: not online" in detail and "few: 3 labelled samples" in detail
    # A spec whose architecture does not fit the base weights is refused at creation.
    wrong = http.post("/api/v1/campaigns", json={"spec": _spec(validation, architecture_args={"sizes": [64, 10]})})
    assert wrong.status_code == 422 and "shape (32, 64) in the ONNX file" in wrong.json()["detail"]
    unknown = http.post("/api/v1/campaigns", json={"spec": _spec(validation) | {"bogus": 1}})
    assert unknown.status_code == 422


@pytest.mark.parametrize("architecture", ["subprocess:run", "os:system", "builtins:exec"])
def test_a_campaign_spec_cannot_make_the_coordinator_run_code(
    architecture: str,
    http: TestClient,
    tmp_path: Path,
    keys: Keys,
    digits: DigitsModels,
    mosquitto: LocalBroker,
    data,  # type: ignore[no-untyped-def]
) -> None:
    # Prepare: an operator's spec naming an arbitrary callable with arguments that would leave a mark
    validation = _setup(http, tmp_path, keys, digits, mosquitto, data)
    marker = tmp_path / "owned"
    args = {"args": ["touch", str(marker)]} if architecture == "subprocess:run" else {}
    spec = _spec(validation, architecture=architecture, architecture_args=args)
    # Execute
    response = http.post("/api/v1/campaigns", json={"spec": spec, "start": True})
    # Assert: refused before anything is imported or called
    assert response.status_code == 422 and "is not allowed" in response.json()["detail"], response.text
    assert not marker.exists()
    assert http.get("/api/v1/campaigns").json() == []


def test_a_campaign_whose_training_diverges_fails_and_registers_nothing(
    http: TestClient,
    tmp_path: Path,
    keys: Keys,
    digits: DigitsModels,
    mosquitto: LocalBroker,
    data,  # type: ignore[no-untyped-def]
) -> None:
    # Prepare: a learning rate that blows the weights up within a round (no DP clipping to hold them)
    validation = _setup(http, tmp_path, keys, digits, mosquitto, data)
    spec = _spec(validation, privacy=None, learning_rate=1e30, rounds=2)
    # Execute
    created = http.post("/api/v1/campaigns", json={"spec": spec, "target": {"device_class": "rpi5"}, "start": True})
    assert created.status_code == 201, created.text
    result = _wait_final(http, created.json()["id"])
    # Assert
    assert result["status"] == "failed" and result["reason"].startswith("training diverged"), result["reason"]
    assert result.get("result_version") is None
    assert [v["version"] for v in http.get("/api/v1/models/digits").json()["versions"]] == ["1.0"]


def test_abort_stops_between_rounds_and_registers_nothing(
    http: TestClient,
    tmp_path: Path,
    keys: Keys,
    digits: DigitsModels,
    mosquitto: LocalBroker,
    data,  # type: ignore[no-untyped-def]
) -> None:
    validation = _setup(http, tmp_path, keys, digits, mosquitto, data)
    created = http.post("/api/v1/campaigns", json={"spec": _spec(validation, rounds=200, privacy=None), "start": True})
    campaign_id = created.json()["id"]
    wait_until(lambda: http.get(f"/api/v1/campaigns/{campaign_id}").json()["round"] >= 1, 60, what="first round")
    assert http.post(f"/api/v1/campaigns/{campaign_id}/abort").status_code == 200
    result = _wait_final(http, campaign_id)
    assert result["status"] == "aborted" and result.get("result_version") is None
    assert 1 <= len(result["history"]) < 200
    versions = [v["version"] for v in http.get("/api/v1/models/digits").json()["versions"]]
    assert versions == ["1.0"]
    assert http.post(f"/api/v1/campaigns/{campaign_id}/abort").status_code == 409


def test_secure_aggregation_campaign_states_its_distributed_dp_guarantee(
    http: TestClient,
    tmp_path: Path,
    keys: Keys,
    digits: DigitsModels,
    mosquitto: LocalBroker,
    data,  # type: ignore[no-untyped-def]
) -> None:
    validation = _setup(http, tmp_path, keys, digits, mosquitto, data)
    privacy = {"mode": "distributed", "noise_multiplier": 2.0, "clip_norm": 1.0, "max_epsilon": 8.0}
    spec = _spec(validation, rounds=2, secure_aggregation=True, privacy=privacy, batch_size=1000)
    created = http.post("/api/v1/campaigns", json={"spec": spec, "start": True})
    assert created.status_code == 201, created.text
    result = _wait_final(http, created.json()["id"])
    assert result["status"] == "completed", result["reason"]
    report = result["privacy"]
    assert report["mode"] == "distributed" and report["secure_aggregation"] is True
    # The sum of 2+ updates carries the whole noise; one update alone only 1/sqrt(min_clients=2) of it.
    assert 0 < report["epsilon"] < report["local_epsilon"]
    version = result["result_version"]
    staged = next(v for v in http.get("/api/v1/models/digits").json()["versions"] if v["version"] == version)
    bundle = http.get(f"/api/v1/bundles/{staged['bundles'][0]['digest']}").json()
    manifest = Manifest.model_validate_json(bundle["manifest"])
    assert manifest.privacy is not None and manifest.privacy.secure_aggregation
    assert manifest.privacy.local_epsilon == pytest.approx(report["local_epsilon"])
