"""A campaign on Flower's real deployment engine: the coordinator's SuperLink, a SuperNode started by
each device's FederatedParticipant, the campaign ServerApp and ClientApps in their own processes."""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edgefleet.agent.config import FederatedConfig
from edgefleet.agent.learning.node_key import load_or_create_node_key
from edgefleet.agent.learning.participant import FederatedParticipant
from edgefleet.cli.main import app
from edgefleet.common.flower_processes import DeploymentError, SuperNodeProcess, TlsFiles
from edgefleet.coordinator.campaigns.engines import DeploymentEngine
from edgefleet.coordinator.campaigns.manager import CampaignManager
from edgefleet.coordinator.registry.artifacts import Registry
from edgefleet.coordinator.registry.models import ModelRegistry
from edgefleet.coordinator.store.sqlite import SQLiteStore
from edgefleet.federated.client.data import dirichlet_split, fill_sample_store
from edgefleet.federated.client.privacy import PrivacyLedger
from edgefleet.federated.spec import CampaignSpec
from edgefleet.local.digits import load_digits_data
from edgefleet.local.fleet import LocalFleet, wait_until
from edgefleet.protocol.messages import Availability, CampaignAssignment, ReportedState
from edgefleet.protocol.signing import load_trusted_keys
from tests.conftest import DigitsModels, Keys, build
from tests.test_dashboard import CHROMIUM, _chromium
from tests.test_tls import _ca, _server_cert

runner = CliRunner()


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_campaign_runs_on_a_tls_superlink_with_two_supernodes(tmp_path: Path, keys: Keys, digits: DigitsModels) -> None:
    # Prepare: registry with the base version, two online devices with samples, their participants (each
    # reports its SuperNode public key), a third device that reports no key, and an intruder SuperNode
    # with a key nobody registered that tries to join the campaign's SuperLink
    data = load_digits_data()
    root = tmp_path / "coordinator"
    db = SQLiteStore(root / "fleet.db") if root.mkdir() is None else None
    assert db is not None
    registry = Registry(root, db, load_trusted_keys([keys.public]))
    models = ModelRegistry(db)
    registry.add_archive(build(digits.v1, tmp_path / "base.bundle", keys, version="1.0", device_class="rpi5")[0])
    participants = {}
    for device, idx in zip(("a", "b"), dirichlet_split(data.y_train, 2, alpha=1.0, seed=3), strict=True):
        samples = tmp_path / device / "samples.db"
        samples.parent.mkdir()
        fill_sample_store(samples, data.x_train[idx], data.y_train[idx], input_name="pixels")
        participant = FederatedParticipant(device, tmp_path / device, samples, FederatedConfig(startup_timeout_s=60))
        db.record_reported(ReportedState(device_id=device, device_class="rpi5", agent_version="t", status="ready",
                                         training_samples=len(idx), started_at=time.time(),  # type: ignore[arg-type]
                                         supernode_public_key=participant.supernode_public_key))  # fmt: skip
        db.record_availability(Availability(device_id=device, state="online"))
        participant.start()
        participants[device] = participant
    db.record_reported(ReportedState(device_id="old", device_class="rpi5", agent_version="t", status="ready",
                                     training_samples=500, started_at=time.time()))  # type: ignore[arg-type]  # fmt: skip
    db.record_availability(Availability(device_id="old", state="online"))
    notified: list[CampaignAssignment] = []
    intruder_key = load_or_create_node_key(tmp_path / "intruder")
    intruder: list[SuperNodeProcess] = []
    intruder_errors: list[DeploymentError] = []

    def intrude(assignment: CampaignAssignment) -> None:
        assert assignment.superlink and assignment.root_certificate
        ca = tmp_path / "intruder" / "ca.pem"
        ca.write_text(assignment.root_certificate)
        node = SuperNodeProcess(
            assignment.superlink,
            {"device-id": "intruder", "samples-db": str(tmp_path / "a" / "samples.db"),
             "state-dir": str(tmp_path / "intruder" / "privacy")},
            tmp_path / "intruder" / "node", root_certificates=ca, auth_private_key=intruder_key.path,
        )  # fmt: skip
        intruder.append(node)
        try:
            node.start()
        except DeploymentError as exc:
            intruder_errors.append(exc)

    def notify(assignment: CampaignAssignment) -> None:  # what the coordinator's MQTT link delivers
        if assignment.campaign_id and not notified:
            threading.Thread(target=intrude, args=(assignment,), daemon=True).start()
        notified.append(assignment)
        participants[assignment.device_id].assign(assignment)

    # The SuperLink speaks TLS; devices get its CA with the assignment and verify it.
    (tmp_path / "tls").mkdir()
    ca_key, ca_cert, ca_file = _ca(tmp_path / "tls", "edgefleet campaigns CA")
    cert, key = _server_cert(tmp_path / "tls", ca_key, ca_cert)
    engine = DeploymentEngine(root / "campaigns", notify, tls=TlsFiles(cert, key, ca_file))
    manager = CampaignManager(db, models, registry, signing_key=keys.private, engine=engine)
    spec = CampaignSpec.model_validate(
        {
            "model": "digits", "base_version": "1.0", "architecture": "mlp",
            "architecture_args": {"sizes": [64, 32, 10]}, "input_name": "pixels", "rounds": 2, "min_clients": 2,
            "max_clients": 3, "min_samples": 20, "node_wait_s": 90, "round_timeout_s": 120, "learning_rate": 0.1,
            # Secure aggregation through the real SuperLink: four SecAgg+ stages per round, each client's
            # state kept by its SuperNode between the ClientApp processes of one round.
            "secure_aggregation": True,
            "privacy": {"mode": "distributed", "noise_multiplier": 1.0, "max_epsilon": 10.0},
        }
    )  # fmt: skip
    try:
        # Execute
        campaign_id = manager.create(spec)["id"]
        started = manager.start(campaign_id)
        result = manager.wait(campaign_id, timeout=360)
    finally:
        for participant in participants.values():
            participant.stop()
        for node in intruder:
            node.stop()
    # Assert
    assert result["status"] == "completed", result.get("reason")
    assert [r["status"] for r in result["history"]] == ["ok", "ok"]
    # Only the registered nodes trained, in both rounds, though the rounds took up to 3 clients.
    assert [{p["device"] for p in r["participants"]} for r in result["history"]] == [{"a", "b"}, {"a", "b"}]
    assert started["devices"] == ["a", "b"] and "no SuperNode public key" in started["skipped"]["old"]
    assert all(a.node_auth for a in notified if a.campaign_id)
    # The SuperLink refused the intruder's unregistered key: its SuperNode gave up and said why.
    assert len(intruder_errors) == 1 and "exited with code" in intruder_errors[0].reason, intruder_errors
    assert "Failed to activate SuperNode" in intruder_errors[0].log_tail
    assert intruder[0].node_id is None
    assert result["result_version"] == f"1.0+fl.{campaign_id}"
    privacy = result["privacy"]
    assert privacy["mode"] == "distributed" and privacy["secure_aggregation"]
    assert 0 < privacy["epsilon"] <= 10.0 < privacy["local_epsilon"]  # one update alone has half the noise
    assert {(a.device_id, a.campaign_id) for a in notified} == {
        ("a", campaign_id),
        ("a", None),
        ("b", campaign_id),
        ("b", None),
    }  # joined, then released; "old" never
    # Nodes were started with the CA from the assignment (no --insecure: TLS was verified end to end).
    assert (tmp_path / "a" / "federated" / campaign_id / "superlink-ca.pem").read_bytes() == ca_file.read_bytes()
    for device in ("a", "b"):
        ledger = PrivacyLedger.open(
            tmp_path / device / "federated" / "privacy", campaign_id, accountant="rdp", delta=1e-5
        )
        assert [r["round"] for r in ledger.rounds] == [1, 2]
        assert participants[device].campaign_id is None


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_campaign_from_the_cli_runs_on_real_agents(
    tmp_path: Path, fleet: LocalFleet, keys: Keys, digits: DigitsModels
) -> None:
    # Prepare: a coordinator process that runs campaigns, two agent processes serving the base model,
    # each with labelled samples in its own store (as the Feedback API leaves them)
    data = load_digits_data()
    url = fleet.start_coordinator(campaigns={"signing_key": str(keys.private)})
    for device, idx in zip(("pi-a", "pi-b"), dirichlet_split(data.y_train, 2, alpha=1.0, seed=4), strict=True):
        agent = fleet.add_agent(device, device_class="rpi5")
        agent.data_dir.mkdir(parents=True, exist_ok=True)
        fill_sample_store(agent.data_dir / "samples.db", data.x_train[idx], data.y_train[idx], input_name="pixels")
    fleet.start_agents(["pi-a", "pi-b"])
    base, digest = build(digits.v1, tmp_path / "base.bundle", keys, version="1.0", device_class="rpi5")
    fleet.upload(base)
    fleet.deploy(digest)
    fleet.wait_active(digest, ["pi-a", "pi-b"])
    validation = tmp_path / "holdout.npz"
    np.savez(validation, pixels=data.x_test, label=data.y_test)
    spec = tmp_path / "campaign.toml"
    spec.write_text(
        'model = "digits"\nbase_version = "1.0"\narchitecture = "mlp"\narchitecture_args = { sizes = [64, 32, 10] }\n'
        'input_name = "pixels"\nrounds = 2\nmin_clients = 2\nmax_clients = 2\nlearning_rate = 0.1\n'
        f'node_wait_s = 90\nvalidation_data = "{validation}"\n'
        '[privacy]\nmode = "local"\ntarget_epsilon = 4.0\nmax_epsilon = 4.0\n'
    )
    auth = ["--url", url, "--token", fleet.token]
    # Execute
    created = runner.invoke(app, ["campaign", "create", str(spec), "--target", "class=rpi5", "--start",
                                  *auth, "--format", "json"])  # fmt: skip
    assert created.exit_code == 0, created.output
    campaign_id = json.loads(created.output)["id"]
    watched = runner.invoke(app, ["campaign", "status", campaign_id, "--watch", *auth])
    # Assert
    assert watched.exit_code == 0, watched.output
    assert "round 1 ok: 2 trained, 0 declined" in watched.output and "round 2 ok" in watched.output
    final = fleet.get(f"/api/v1/campaigns/{campaign_id}")
    assert final["status"] == "completed" and final["result_version"] == f"1.0+fl.{campaign_id}"
    assert final["privacy"]["epsilon"] == pytest.approx(4.0, abs=0.1)  # the whole budget, spread over both rounds
    staged = [v for v in fleet.get("/api/v1/models/digits")["versions"] if v["version"] == final["result_version"]]
    assert staged and staged[0]["stage"] == "staging"
    listed = runner.invoke(app, ["campaign", "list", *auth, "--format", "json"])
    assert [c["id"] for c in json.loads(listed.output)] == [campaign_id]
    # The dashboard shows the campaign with its per-round accuracy and privacy charts.
    if CHROMIUM is not None:
        page = _chromium(
            tmp_path / "profile", "--dump-dom", f"{url}/dashboard/#token={fleet.token}&/campaigns/{campaign_id}"
        )
        assert 'id="error"' not in page and f'data-campaign="{campaign_id}"' in page
        charts = dict(re.findall(r'data-series="(accuracy|epsilon)" data-points="(\d+)"', page))
        assert charts == {"accuracy": "2", "epsilon": "2"}, page
    # The agents left the campaign: no SuperNode runs any more, and they say so.
    wait_until(lambda: all(fleet.device(d)["reported"]["campaign"] is None for d in ("pi-a", "pi-b")), timeout=30,
               what="agents out of the campaign")  # fmt: skip
