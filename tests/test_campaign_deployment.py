"""A campaign on Flower's real deployment engine: the coordinator's SuperLink, a SuperNode started by
each device's FederatedParticipant, the campaign ServerApp and ClientApps in their own processes."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from agent.config import FederatedConfig
from agent.federated_node import FederatedParticipant
from compression.digits import load_digits_data
from coordinator.campaign_engines import DeploymentEngine
from coordinator.campaigns import CampaignManager
from coordinator.db import FleetDB
from coordinator.model_registry import ModelRegistry
from coordinator.registry import Registry
from federated.data import dirichlet_split, fill_sample_store
from federated.privacy import PrivacyLedger
from federated.spec import CampaignSpec
from protocol.messages import Availability, ReportedState
from protocol.signing import load_trusted_keys
from tests.conftest import DigitsModels, Keys, build


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_campaign_runs_on_a_superlink_with_two_supernodes(tmp_path: Path, keys: Keys, digits: DigitsModels) -> None:
    # Prepare: registry with the base version, two online devices with samples, their participants
    data = load_digits_data()
    root = tmp_path / "coordinator"
    db = FleetDB(root / "fleet.db") if root.mkdir() is None else None
    assert db is not None
    registry = Registry(root, db, load_trusted_keys([keys.public]))
    models = ModelRegistry(db)
    registry.add_archive(build(digits.v1, tmp_path / "base.bundle", keys, version="1.0", device_class="rpi5")[0])
    participants = {}
    for device, idx in zip(("a", "b"), dirichlet_split(data.y_train, 2, alpha=1.0, seed=3), strict=True):
        samples = tmp_path / device / "samples.db"
        samples.parent.mkdir()
        fill_sample_store(samples, data.x_train[idx], data.y_train[idx], input_name="pixels")
        db.record_reported(ReportedState(device_id=device, device_class="rpi5", agent_version="t", status="ready",
                                         training_samples=len(idx), started_at=time.time()))  # type: ignore[arg-type]  # fmt: skip
        db.record_availability(Availability(device_id=device, state="online"))
        participant = FederatedParticipant(device, tmp_path / device, samples, FederatedConfig(startup_timeout_s=60))
        participant.start()
        participants[device] = participant
    notified: list[tuple[str, str | None]] = []

    def notify(assignment):  # type: ignore[no-untyped-def]  # what the coordinator's MQTT link delivers
        notified.append((assignment.device_id, assignment.campaign_id))
        participants[assignment.device_id].assign(assignment)

    engine = DeploymentEngine(root / "campaigns", root / "fleet.db", notify)
    manager = CampaignManager(db, models, registry, signing_key=keys.private, engine=engine)
    spec = CampaignSpec.model_validate(
        {
            "model": "digits", "base_version": "1.0", "architecture": "mlp",
            "architecture_args": {"sizes": [64, 32, 10]}, "input_name": "pixels", "rounds": 2, "min_clients": 2,
            "max_clients": 2, "min_samples": 20, "node_wait_s": 90, "round_timeout_s": 120, "learning_rate": 0.1,
            "privacy": {"mode": "local", "noise_multiplier": 1.0, "max_epsilon": 10.0},
        }
    )  # fmt: skip
    try:
        # Execute
        campaign_id = manager.create(spec)["id"]
        manager.start(campaign_id)
        result = manager.wait(campaign_id, timeout=360)
    finally:
        for participant in participants.values():
            participant.stop()
    # Assert
    assert result["status"] == "completed", result.get("reason")
    assert [r["status"] for r in result["history"]] == ["ok", "ok"]
    assert {p["device"] for p in result["history"][0]["participants"]} == {"a", "b"}
    assert result["result_version"] == f"1.0+fl.{campaign_id}"
    assert result["privacy"]["mode"] == "local" and 0 < result["privacy"]["epsilon"] <= 10.0
    assert ("a", campaign_id) in notified and ("a", None) in notified  # joined, then released
    for device in ("a", "b"):
        ledger = PrivacyLedger.open(
            tmp_path / device / "federated" / "privacy", campaign_id, accountant="rdp", delta=1e-5
        )
        assert [r["round"] for r in ledger.rounds] == [1, 2]
        assert participants[device].campaign_id is None
