"""Secure aggregation (Flower's SecAgg+) in campaign rounds, and distributed DP on top of it."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Context, Message
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from pydantic import ValidationError

from edgefleet.federated.accounting import epsilon_of
from edgefleet.federated.client.client_app import app as client_app
from edgefleet.federated.client.data import dirichlet_split, fill_sample_store
from edgefleet.federated.client.privacy import PrivacyLedger
from edgefleet.federated.inprocess import InProcessGrid, InProcessNode
from edgefleet.federated.models import build_model
from edgefleet.federated.server.rounds import run_rounds
from edgefleet.federated.server.strategies import build_strategy
from edgefleet.federated.spec import CampaignSpec
from edgefleet.federated.weights import model_to_arrays
from edgefleet.local.digits import load_digits_data
from edgefleet.protocol.campaign import Decline
from tests.test_federated import _nodes

ARCH = {"architecture_args": {"sizes": [64, 10], "standardize": True}}


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    digits = load_digits_data()
    root = tmp_path_factory.mktemp("secagg-stores")
    paths = []
    for i, idx in enumerate(dirichlet_split(digits.y_train, 4, alpha=1.0, seed=3)):
        fill_sample_store(root / f"d{i}.sqlite", digits.x_train[idx], digits.y_train[idx])
        paths.append(root / f"d{i}.sqlite")
    return paths


def _run(spec: CampaignSpec, nodes: list[InProcessNode], initial, campaign_id: str):  # type: ignore[no-untyped-def]
    grid = InProcessGrid(nodes)
    try:
        return run_rounds(grid, build_strategy(spec), spec, initial, campaign_id=campaign_id)
    finally:
        grid.close()


def _stage(message: Message) -> str | None:
    configs = message.content.config_records.get(RECORD_KEY_CONFIGS)
    return str(configs[Key.STAGE]) if configs is not None else None


# One full-batch SGD step per round: deterministic, so plain and secure rounds can be compared.
PLAIN = {"model": "digits", "rounds": 1, "min_clients": 2, "max_clients": 4, "batch_size": 10_000,
         "learning_rate": 0.5, "node_wait_s": 0, **ARCH}  # fmt: skip


def test_a_secure_round_yields_the_plain_weighted_mean(tmp_path: Path, stores: list[Path]) -> None:
    initial = model_to_arrays(build_model("mlp", ARCH["architecture_args"]))
    # Record every reply the server receives in the secure campaign
    seen: list[Message] = []

    def recording(message: Message, context: Context) -> Message:
        reply = client_app(message, context)
        seen.append(reply)
        return reply

    plain = _run(CampaignSpec(**PLAIN), _nodes(stores, tmp_path / "p"), initial, "plain")
    secure = _run(CampaignSpec(**PLAIN, secure_aggregation=True), _nodes(stores, tmp_path / "s", recording),
                  initial, "secure")  # fmt: skip
    assert plain.status == secure.status == "completed", secure.reason
    for key in initial:
        np.testing.assert_allclose(secure.arrays[key].numpy(), plain.arrays[key].numpy(), atol=2e-4)
        assert not np.allclose(secure.arrays[key].numpy(), initial[key].numpy())
    record = secure.rounds[0]
    assert all(p["loss"] > 0 for p in record.participants)
    assert sorted((p["device"], p["examples"]) for p in record.participants) == sorted(
        (p["device"], p["examples"]) for p in plain.rounds[0].participants
    )
    # Four protocol stages per node, and no reply ever carried weights: only masked integer vectors.
    assert len(seen) == 4 * 4
    assert all(not any(len(r) for r in reply.content.array_records.values()) for reply in seen)
    masked = [reply for reply in seen if Key.MASKED_PARAMETERS in reply.content.config_records[RECORD_KEY_CONFIGS]]
    assert len(masked) == 4


def test_a_node_that_drops_out_mid_protocol_is_unmasked_away(tmp_path: Path, stores: list[Path]) -> None:
    initial = model_to_arrays(build_model("mlp", ARCH["architecture_args"]))

    def drops_before_sending_its_update(message: Message, context: Context) -> Message:
        if _stage(message) == Stage.COLLECT_MASKED_VECTORS:
            raise ConnectionError("device went offline")
        return client_app(message, context)

    nodes = _nodes(stores, tmp_path / "s")
    nodes[2].app = drops_before_sending_its_update
    secure = _run(CampaignSpec(**PLAIN, secure_aggregation=True), nodes, initial, "drop")
    # The mean of the three that stayed, as plain FedAvg over those three computes it
    plain = _run(CampaignSpec(**PLAIN), [n for i, n in enumerate(_nodes(stores, tmp_path / "p")) if i != 2],
                 initial, "three")  # fmt: skip
    assert secure.status == "completed", secure.reason
    assert {p["device"] for p in secure.rounds[0].participants} == {"dev-0", "dev-1", "dev-3"}
    assert "device went offline" in secure.rounds[0].declined[0]["reason"]
    assert secure.rounds[0].declined[0]["node"] == 1002  # the in-process grid numbers nodes from 1000
    for key in initial:
        np.testing.assert_allclose(secure.arrays[key].numpy(), plain.arrays[key].numpy(), atol=2e-4)


def test_too_few_masked_updates_are_never_unmasked(tmp_path: Path, stores: list[Path]) -> None:
    def drops(message: Message, context: Context) -> Message:
        if _stage(message) == Stage.COLLECT_MASKED_VECTORS:
            raise ConnectionError("device went offline")
        return client_app(message, context)

    nodes = _nodes(stores, tmp_path)
    for node in nodes[1:]:
        node.app = drops
    spec = CampaignSpec(**PLAIN | {"min_clients": 3, "max_failed_rounds": 1}, secure_aggregation=True)
    outcome = _run(spec, nodes, model_to_arrays(build_model("mlp", ARCH["architecture_args"])), "few")
    assert outcome.status == "failed"
    assert "secure aggregation did not complete" in outcome.rounds[0].reason


def test_distributed_dp_splits_the_noise_and_accounts_both_epsilons(tmp_path: Path, stores: list[Path]) -> None:
    spec = CampaignSpec(**PLAIN | {"rounds": 3, "min_clients": 4}, secure_aggregation=True,
                        privacy={"mode": "distributed", "noise_multiplier": 2.0, "accountant": "prv",
                                 "max_epsilon": 100.0})  # fmt: skip
    outcome = _run(spec, _nodes(stores, tmp_path), model_to_arrays(build_model("mlp", ARCH["architecture_args"])),
                   "ddp")  # fmt: skip
    assert outcome.status == "completed", outcome.reason
    # The ledger accounts the noise of the sum (multiplier 2, one full-batch step per round)...
    expected = epsilon_of([(2.0, 1.0, 3)], 1e-5, "prv")
    own = epsilon_of([(2.0 / math.sqrt(4), 1.0, 3)], 1e-5, "prv")
    for p in outcome.rounds[-1].participants:
        assert p["epsilon"] == pytest.approx(expected, rel=1e-6)
        # ...and each update alone carries half of that noise: its own epsilon is far larger.
        assert p["local_epsilon"] == pytest.approx(own, rel=1e-6) and own > 2 * expected
        assert "loss" not in p  # the loss on private samples is not covered by DP: never sent under it
    ledger = PrivacyLedger.open(tmp_path / "n0", "ddp", accountant="prv", delta=1e-5)
    assert ledger.history == [(2.0, 1.0, 3)]


def test_a_budget_decline_reaches_the_round_record(tmp_path: Path, stores: list[Path]) -> None:
    spec = CampaignSpec(**PLAIN | {"rounds": 1, "min_clients": 2}, secure_aggregation=True,
                        privacy={"mode": "distributed", "noise_multiplier": 0.5, "max_epsilon": 1.0})  # fmt: skip
    outcome = _run(spec, _nodes(stores, tmp_path), model_to_arrays(build_model("mlp", ARCH["architecture_args"])),
                   "budget")  # fmt: skip
    assert outcome.status == "budget_exhausted"
    assert {d["code"] for d in outcome.rounds[0].declined} == {Decline.BUDGET_EXHAUSTED}
    assert "privacy budget" in outcome.rounds[0].declined[0]["reason"]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"privacy": {"mode": "distributed", "noise_multiplier": 1.0}}, "needs secure_aggregation"),
        ({"secure_aggregation": True, "strategy": "fedmedian"}, "use fedavg or fedprox"),
        ({"secure_aggregation": True, "privacy": {"mode": "central", "noise_multiplier": 1.0}}, "central DP"),
        (
            {"secure_aggregation": True, "local_epochs": 2, "privacy": {"mode": "distributed", "target_epsilon": 3.0}},
            "local_epochs to 1",
        ),
        ({"secure_aggregation": True, "min_clients": 1}, "min_clients >= 2"),
    ],
)
def test_specs_that_secure_aggregation_cannot_serve_are_refused(changes: dict, message: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ValidationError, match=message):
        CampaignSpec(**PLAIN | changes)
