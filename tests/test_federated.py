"""Federated core on real parts: Opacus DP-SGD with cumulative accounting, the budget stop, fresh noise,
FedProx's term, Flower strategies and dropout tolerance, through the in-process Grid."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict
from opacus.accountants import RDPAccountant
from pydantic import ValidationError

from edgefleet.federated.accounting import central_epsilon, epsilon_of
from edgefleet.federated.client.client_app import app as client_app
from edgefleet.federated.client.data import dirichlet_split, fill_sample_store, load_samples
from edgefleet.federated.client.privacy import PrivacyLedger
from edgefleet.federated.client.training import TrainConfig, train
from edgefleet.federated.errors import BudgetExhausted, LocalDataError
from edgefleet.federated.inprocess import InProcessGrid, InProcessNode
from edgefleet.federated.models import build_model
from edgefleet.federated.scoring import LocalData, evaluate
from edgefleet.federated.server.rounds import moving_average, run_rounds
from edgefleet.federated.server.strategies import build_strategy
from edgefleet.federated.spec import CampaignSpec
from edgefleet.federated.weights import arrays_to_model, load_onnx_weights, model_to_arrays
from edgefleet.local.digits import load_digits_data
from edgefleet.protocol.campaign import Decline


@pytest.fixture(scope="module")
def digits():  # type: ignore[no-untyped-def]
    return load_digits_data()


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory, digits) -> list[Path]:  # type: ignore[no-untyped-def]
    """Four agent sample stores holding a non-IID split of the digits training set."""
    root = tmp_path_factory.mktemp("stores")
    paths = []
    for i, idx in enumerate(dirichlet_split(digits.y_train, 4, alpha=1.0, seed=1)):
        fill_sample_store(root / f"d{i}.sqlite", digits.x_train[idx], digits.y_train[idx])
        paths.append(root / f"d{i}.sqlite")
    return paths


def _nodes(stores: list[Path], state: Path, app=client_app) -> list[InProcessNode]:  # type: ignore[no-untyped-def]
    return [
        InProcessNode(app, {"samples-db": str(p), "state-dir": str(state / f"n{i}"), "device-id": f"dev-{i}"})
        for i, p in enumerate(stores)
    ]


def _evaluator(digits):  # type: ignore[no-untyped-def]
    test = LocalData(digits.x_test, digits.y_test)

    def evaluate_fn(_round: int, arrays) -> dict[str, float]:  # type: ignore[no-untyped-def]
        _, accuracy = evaluate(arrays_to_model(build_model("mlp"), arrays), test)
        return {"accuracy": float(accuracy or 0.0)}

    return evaluate_fn


def _data(digits, n: int = 300) -> LocalData:  # type: ignore[no-untyped-def]
    return LocalData(digits.x_train[:n], digits.y_train[:n])


# -- privacy accounting -------------------------------------------------------------------------


def test_cumulative_epsilon_matches_opacus_accountant_and_survives_restart(tmp_path: Path, digits) -> None:  # type: ignore[no-untyped-def]
    # Prepare
    ledger = PrivacyLedger.open(tmp_path, "camp-1", accountant="rdp", delta=1e-5)
    cfg = TrainConfig(epochs=1, batch_size=30, learning_rate=0.1, noise_multiplier=1.1, clip_norm=1.0)
    reference = RDPAccountant()
    per_round = []
    # Execute: three DP rounds, each from a fresh model as a ClientApp would start
    for server_round in (1, 2, 3):
        result = train(build_model("mlp"), _data(digits), cfg, ledger=ledger, server_round=server_round)
        for _ in range(result.steps):
            reference.step(noise_multiplier=1.1, sample_rate=result.sample_rate)
        per_round.append(epsilon_of([(1.1, result.sample_rate or 0.0, result.steps)], 1e-5))
        # Assert: the ledger equals Opacus's accountant stepped through every round so far
        assert result.epsilon == pytest.approx(reference.get_epsilon(1e-5), rel=1e-9)
    assert ledger.history == [(1.1, pytest.approx(1 / 10), 30)]
    # The cumulative figure is what one round alone (Flower's example's figure) understates.
    assert ledger.epsilon > 1.3 * per_round[-1]
    reopened = PrivacyLedger.open(tmp_path, "camp-1", accountant="rdp", delta=1e-5)
    assert reopened.epsilon == pytest.approx(ledger.epsilon)
    assert [r["round"] for r in reopened.rounds] == [1, 2, 3]


def test_ledger_refuses_a_damaged_file_or_a_changed_delta(tmp_path: Path) -> None:
    ledger = PrivacyLedger.open(tmp_path, "c", accountant="rdp", delta=1e-5)
    ledger.record((1.0, 0.1, 10), 1)
    with pytest.raises(LocalDataError, match="delta"):
        PrivacyLedger.open(tmp_path, "c", accountant="rdp", delta=1e-3)
    ledger.path.write_text("{not json")
    with pytest.raises(LocalDataError, match="unreadable"):
        PrivacyLedger.open(tmp_path, "c", accountant="rdp", delta=1e-5)


def test_budget_stop_declines_before_training_and_spends_nothing(tmp_path: Path, digits) -> None:  # type: ignore[no-untyped-def]
    # Prepare: a budget that admits one round but not two
    ledger = PrivacyLedger.open(tmp_path, "camp", accountant="rdp", delta=1e-5)
    one_round = epsilon_of([(1.1, 0.1, 10)], 1e-5)
    cfg = TrainConfig(batch_size=30, noise_multiplier=1.1, max_epsilon=one_round * 1.2)
    train(build_model("mlp"), _data(digits), cfg, ledger=ledger, server_round=1)
    model = build_model("mlp")
    before = [p.detach().clone() for p in model.parameters()]
    # Execute
    with pytest.raises(BudgetExhausted) as info:
        train(model, _data(digits), cfg, ledger=ledger, server_round=2)
    # Assert
    assert info.value.projected > cfg.max_epsilon >= info.value.spent
    assert "declining to train" in info.value.reason
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert ledger.epsilon == pytest.approx(one_round)
    assert len(PrivacyLedger.open(tmp_path, "camp", accountant="rdp", delta=1e-5).rounds) == 1


def test_target_epsilon_spreads_the_budget_over_all_rounds(tmp_path: Path, digits) -> None:  # type: ignore[no-untyped-def]
    ledger = PrivacyLedger.open(tmp_path, "t", accountant="rdp", delta=1e-5)
    cfg = TrainConfig(batch_size=30, target_epsilon=2.0, rounds=4, max_epsilon=2.5)
    for server_round in range(1, 5):
        result = train(build_model("mlp"), _data(digits), cfg, ledger=ledger, server_round=server_round)
    assert result.epsilon == pytest.approx(2.0, abs=0.05)  # noise chosen at round one for all four
    assert ledger.noise_multiplier is not None


def test_dp_noise_never_repeats_even_with_the_same_seed(digits) -> None:  # type: ignore[no-untyped-def]
    # Prepare: identical start, data and torch seed (so Poisson sampling draws the same batches)
    start = model_to_arrays(build_model("mlp"))
    cfg = TrainConfig(batch_size=30, noise_multiplier=1.0)
    updates = []
    for i in range(2):
        torch.manual_seed(0)
        model = arrays_to_model(build_model("mlp"), start)
        ledger = PrivacyLedger.open(Path(f"/tmp/noise-{time.time_ns()}-{i}"), "n", accountant="rdp", delta=1e-5)
        train(model, _data(digits), cfg, ledger=ledger, server_round=1)
        updates.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    # Assert: only the noise can differ, and it does
    assert not torch.allclose(updates[0], updates[1])


# -- FedProx ----------------------------------------------------------------------------------


@pytest.mark.parametrize("dp", [False, True])
def test_fedprox_term_keeps_the_local_model_near_the_global_one(tmp_path: Path, digits, dp: bool) -> None:  # type: ignore[no-untyped-def]
    start = model_to_arrays(build_model("mlp"))
    global_params = torch.cat([p.flatten() for p in arrays_to_model(build_model("mlp"), start).parameters()])
    drift = {}
    for mu in (0.0, 5.0):
        torch.manual_seed(0)
        model = arrays_to_model(build_model("mlp"), start)
        cfg = TrainConfig(epochs=3, batch_size=30, learning_rate=0.1, proximal_mu=mu,
                          noise_multiplier=0.5 if dp else None)  # fmt: skip
        ledger = PrivacyLedger.open(tmp_path / f"{mu}", "p", accountant="rdp", delta=1e-5) if dp else None
        train(model, _data(digits), cfg, ledger=ledger, server_round=1)
        drift[mu] = float((torch.cat([p.detach().flatten() for p in model.parameters()]) - global_params).norm())
    assert drift[5.0] < 0.6 * drift[0.0]


# -- the ClientApp ------------------------------------------------------------------------------


def _train_message(spec: CampaignSpec, arrays, server_round: int = 1, kind: str = "train") -> Message:  # type: ignore[no-untyped-def]
    config = ConfigRecord({"campaign-id": "c-test", "campaign": spec.model_dump_json(), "server-round": server_round})
    message = Message(RecordDict({"arrays": arrays, "config": config}), dst_node_id=7, message_type=kind)
    message.metadata.__dict__["_message_id"] = "m1"
    return message


def test_a_training_message_cannot_choose_the_code_a_device_runs(tmp_path: Path, stores: list[Path]) -> None:
    """An architecture named by the message is imported only if this device's admin allows it."""
    InProcessGrid([])  # sets Flower's task identity for building messages here
    marker = tmp_path / "owned"
    spec = CampaignSpec(model="digits", min_samples=10, architecture="subprocess:run",
                        architecture_args={"args": ["touch", str(marker)]})  # fmt: skip
    context = Context(1, 7, {"samples-db": str(stores[0]), "device-id": "d"}, RecordDict(), {})
    for kind in ("train", "evaluate"):
        reply = client_app(_train_message(spec, model_to_arrays(build_model("mlp")), kind=kind), context)
        assert reply.has_error() and reply.error.code == Decline.BAD_TASK, kind
        assert "is not allowed" in (reply.error.reason or "")
    assert not marker.exists()
    # What the device's own config allows ([federated] architectures) is imported.
    allowed = Context(1, 7, {"samples-db": str(stores[0]), "device-id": "d",
                             "architectures": "edgefleet.federated.models:mlp"}, RecordDict(), {})  # fmt: skip
    spec = CampaignSpec(model="digits", min_samples=10, architecture="edgefleet.federated.models:mlp")
    reply = client_app(_train_message(spec, model_to_arrays(build_model("mlp"))), allowed)
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""


def test_client_app_declines_with_a_reason(tmp_path: Path, stores: list[Path]) -> None:
    InProcessGrid([])  # sets Flower's task identity for building messages here
    spec = CampaignSpec(model="digits", min_samples=10)
    arrays = model_to_arrays(build_model("mlp"))
    empty = Context(1, 7, {"samples-db": str(tmp_path / "none.sqlite"), "device-id": "d"}, RecordDict(), {})
    reply = client_app(_train_message(spec, arrays), empty)
    assert reply.has_error() and reply.error.code == Decline.NO_DATA and "no sample store" in (reply.error.reason or "")
    bad = _train_message(spec, arrays)
    bad.content["config"]["campaign"] = '{"model": "x", "rounds": -1}'
    ok_context = Context(1, 7, {"samples-db": str(stores[0]), "device-id": "d"}, RecordDict(), {})
    assert "bad campaign task" in (client_app(bad, ok_context).error.reason or "")
    wrong = CampaignSpec(model="digits", architecture="mlp", architecture_args={"sizes": [64, 32, 10]})
    reply = client_app(_train_message(wrong, arrays), ok_context)
    assert (reply.has_error() and "do not fit" in (reply.error.reason or "")) or "shape" in (reply.error.reason or "")


def test_sample_store_errors_are_clear(tmp_path: Path, digits) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "s.sqlite"
    fill_sample_store(path, digits.x_train[:5], digits.y_train[:5], input_name="pixels")
    with pytest.raises(LocalDataError, match="needs input 'image'"):
        load_samples(path, input_name="image", label_name="label")
    with pytest.raises(LocalDataError, match="needs 'target'"):
        load_samples(path, input_name=None, label_name="target")
    data = load_samples(path, input_name=None, label_name="label")
    assert data.x.shape == (5, 64) and list(data.y) == list(digits.y_train[:5])


# -- campaigns through the Grid -----------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["fedavg", "fedprox", "fedadam", "fedmedian", "krum"])
def test_every_strategy_trains_the_model(tmp_path: Path, stores: list[Path], digits, strategy: str) -> None:  # type: ignore[no-untyped-def]
    spec = CampaignSpec(model="digits", strategy=strategy, rounds=4, min_clients=4, max_clients=4, local_epochs=2,
                        learning_rate=0.1, server_learning_rate=0.05, proximal_mu=0.01)  # fmt: skip
    grid = InProcessGrid(_nodes(stores, tmp_path))
    try:
        outcome = run_rounds(grid, build_strategy(spec), spec, model_to_arrays(build_model("mlp")),
                             campaign_id="s", evaluate_fn=_evaluator(digits))  # fmt: skip
    finally:
        grid.close()
    assert outcome.status == "completed", outcome.reason
    assert [r.status for r in outcome.rounds] == ["ok"] * 4
    assert {p["device"] for p in outcome.rounds[0].participants} == {f"dev-{i}" for i in range(4)}
    assert outcome.rounds[-1].evaluation["accuracy"] > outcome.initial_evaluation["accuracy"] + 0.15


def test_server_ema_yields_the_average_of_the_released_models(tmp_path: Path, stores: list[Path], digits) -> None:  # type: ignore[no-untyped-def]
    spec = CampaignSpec(model="digits", rounds=3, min_clients=4, max_clients=4, learning_rate=0.1, server_ema=0.5)
    strategy = build_strategy(spec)
    released, evaluated = [], []
    aggregate = strategy.aggregate_train

    def recording_aggregate(server_round, replies):  # type: ignore[no-untyped-def]
        arrays, metrics = aggregate(server_round, replies)
        released.append(arrays)
        return arrays, metrics

    def recording_evaluate(server_round: int, arrays) -> dict[str, float]:  # type: ignore[no-untyped-def]
        evaluated.append(arrays)
        return _evaluator(digits)(server_round, arrays)

    strategy.aggregate_train = recording_aggregate  # type: ignore[method-assign]
    initial = model_to_arrays(build_model("mlp"))
    grid = InProcessGrid(_nodes(stores, tmp_path))
    try:
        outcome = run_rounds(grid, strategy, spec, initial, campaign_id="ema", evaluate_fn=recording_evaluate)
    finally:
        grid.close()
    assert outcome.status == "completed" and len(released) == 3
    expected = initial
    for i, arrays in enumerate(released):
        expected = moving_average(expected, arrays, 0.5)
        # Every evaluation and the result are of the average, never of the latest aggregate alone.
        for key in expected:
            np.testing.assert_allclose(evaluated[i + 1][key].numpy(), expected[key].numpy(), rtol=1e-6)
    for key in expected:
        np.testing.assert_allclose(outcome.arrays[key].numpy(), expected[key].numpy(), rtol=1e-6)
        assert not np.allclose(outcome.arrays[key].numpy(), released[-1][key].numpy())


def test_devices_evaluate_the_global_model_on_their_own_samples(tmp_path: Path, stores: list[Path]) -> None:
    spec = CampaignSpec(model="digits", rounds=2, min_clients=4, max_clients=4, learning_rate=0.1,
                        device_evaluation=True)  # fmt: skip
    grid = InProcessGrid(_nodes(stores, tmp_path))
    try:
        outcome = run_rounds(grid, build_strategy(spec), spec, model_to_arrays(build_model("mlp")), campaign_id="ev")
    finally:
        grid.close()
    assert outcome.status == "completed"
    # The same figures computed directly: the final model on every store, weighted by its samples.
    model = arrays_to_model(build_model("mlp"), outcome.arrays)
    per_store = [
        (len(d), *evaluate(model, d)) for d in (load_samples(p, input_name=None, label_name="label") for p in stores)
    ]
    total = sum(n for n, _, _ in per_store)
    got = outcome.rounds[-1].device_evaluation
    assert got["devices"] == 4 and got["examples"] == total
    assert got["accuracy"] == pytest.approx(sum(n * a for n, _, a in per_store) / total, abs=1e-6)
    assert got["loss"] == pytest.approx(sum(n * loss for n, loss, _ in per_store) / total, rel=1e-5)


def test_device_evaluation_is_refused_under_dp(tmp_path: Path, stores: list[Path]) -> None:
    with pytest.raises(ValueError, match="DP guarantee"):
        CampaignSpec(model="digits", device_evaluation=True, privacy={"mode": "local", "noise_multiplier": 1.0})
    # A device also refuses on its own: a DP campaign's spec never gets it to report on its samples.
    spec = CampaignSpec(model="digits", privacy={"mode": "local", "noise_multiplier": 1.0})
    message = _train_message(spec, model_to_arrays(build_model("mlp")), kind="evaluate")
    reply = client_app(message, Context(1, 7, {"samples-db": str(stores[0]), "device-id": "d"}, RecordDict(), {}))
    assert reply.has_error() and "does not allow evaluation" in reply.error.reason


def test_moving_average_keeps_each_arrays_dtype() -> None:
    from flwr.app import Array, ArrayRecord

    old = ArrayRecord({"w": Array(np.zeros(3, np.float32)), "n": Array(np.array([10], np.int64))})
    new = ArrayRecord({"w": Array(np.ones(3, np.float32)), "n": Array(np.array([20], np.int64))})
    blended = moving_average(old, new, 0.75)
    assert blended["w"].numpy().tolist() == [0.25] * 3 and blended["w"].numpy().dtype == np.float32
    assert blended["n"].numpy().tolist() == [12] and blended["n"].numpy().dtype == np.int64


def test_standardized_mlp_ignores_each_samples_scale_and_exports_to_onnx(tmp_path: Path, digits) -> None:  # type: ignore[no-untyped-def]
    import onnxruntime as ort

    from edgefleet.compression.export import export_onnx

    model = build_model("mlp", {"sizes": [64, 10], "standardize": True})
    # The same weight names as the plain architecture: a base bundle's weights load by name.
    assert list(model.state_dict()) == list(build_model("mlp", {"sizes": [64, 10]}).state_dict())
    x = torch.from_numpy(digits.x_test[:32].astype(np.float32))
    with torch.no_grad():
        out = model(x)
        # Each row on its own scale: a brighter or offset image gives the same logits; no data statistic is used.
        torch.testing.assert_close(model(3 * x + 5), out, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(model(x[:1]), out[:1], rtol=1e-5, atol=1e-5)
    path = export_onnx(model, x[:1], tmp_path / "std.onnx")
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(got, out.numpy(), rtol=1e-4, atol=1e-5)
    reloaded = load_onnx_weights(build_model("mlp", {"sizes": [64, 10], "standardize": True}), path)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), out)


def test_dropouts_and_slow_devices_never_hang_a_round(tmp_path: Path, stores: list[Path]) -> None:
    # Prepare: one device raises, one is slower than the round timeout, two answer
    def slow(message, context):  # type: ignore[no-untyped-def]
        time.sleep(3.0)
        return client_app(message, context)

    def broken(_message, _context):  # type: ignore[no-untyped-def]
        raise RuntimeError("device lost power")

    nodes = _nodes(stores, tmp_path)
    nodes[1].app, nodes[2].app = slow, broken
    spec = CampaignSpec(model="digits", rounds=2, min_clients=2, max_clients=4, round_timeout_s=1.5, node_wait_s=0)
    grid = InProcessGrid(nodes)
    # Execute
    started = time.monotonic()
    try:
        outcome = run_rounds(grid, build_strategy(spec), spec, model_to_arrays(build_model("mlp")), campaign_id="d")
    finally:
        elapsed = time.monotonic() - started
        grid.close()
    # Assert: both rounds complete with the two that answered, each within its timeout
    assert outcome.status == "completed"
    for record in outcome.rounds:
        assert record.status == "ok" and record.sampled == 4 and record.missing == 1
        assert {p["device"] for p in record.participants} == {"dev-0", "dev-3"}
        assert "device lost power" in record.declined[0]["reason"]
    assert elapsed < 2 * 1.5 + 2.0


def test_a_round_below_the_minimum_fails_and_the_campaign_ends(tmp_path: Path, stores: list[Path]) -> None:
    grid = InProcessGrid(_nodes(stores[:3], tmp_path))
    grid.disconnect(1001)
    grid.disconnect(1002)
    spec = CampaignSpec(model="digits", rounds=5, min_clients=2, max_clients=3, node_wait_s=0.5, max_failed_rounds=2)
    try:
        outcome = run_rounds(grid, build_strategy(spec), spec, model_to_arrays(build_model("mlp")), campaign_id="f")
    finally:
        grid.close()
    assert outcome.status == "failed"
    assert [r.status for r in outcome.rounds] == ["failed", "failed"]
    assert "1 clients connected, the round needs 2" in outcome.rounds[0].reason


def test_local_dp_campaign_stops_when_every_client_is_out_of_budget(tmp_path: Path, stores: list[Path]) -> None:
    spec = CampaignSpec(model="digits", rounds=10, min_clients=2, max_clients=4, batch_size=32,
                        privacy={"mode": "local", "noise_multiplier": 1.0, "max_epsilon": 4.0})  # fmt: skip
    grid = InProcessGrid(_nodes(stores, tmp_path))
    try:
        outcome = run_rounds(grid, build_strategy(spec), spec, model_to_arrays(build_model("mlp")), campaign_id="b")
    finally:
        grid.close()
    assert outcome.status == "budget_exhausted", outcome.reason
    assert 0 < max(outcome.client_epsilon.values()) <= 4.0
    codes = {d["code"] for r in outcome.rounds for d in r.declined}
    assert codes == {Decline.BUDGET_EXHAUSTED}
    # The loss on the private samples is not covered by the guarantee, so it is not reported under DP.
    assert all("loss" not in p for r in outcome.rounds for p in r.participants)
    # Every client's reported figure is its ledger's, composed over all the rounds it trained in.
    for i in range(4):
        ledger = PrivacyLedger.open(tmp_path / f"n{i}", "b", accountant="rdp", delta=1e-5)
        if ledger.history:
            assert outcome.client_epsilon[f"dev-{i}"] == pytest.approx(ledger.epsilon)


def test_central_dp_accounts_every_release_and_stops_at_the_budget(tmp_path: Path, stores: list[Path]) -> None:
    per_round = central_epsilon(2.0, 1.0, 1, 1e-5)
    spec = CampaignSpec(model="digits", rounds=10, min_clients=4, max_clients=4,
                        privacy={"mode": "central", "noise_multiplier": 2.0, "clip_norm": 0.5,
                                 "max_epsilon": central_epsilon(2.0, 1.0, 3, 1e-5) + 1e-6})  # fmt: skip
    grid = InProcessGrid(_nodes(stores, tmp_path))
    try:
        outcome = run_rounds(grid, build_strategy(spec), spec, model_to_arrays(build_model("mlp")), campaign_id="cdp")
    finally:
        grid.close()
    assert outcome.status == "budget_exhausted"
    assert [r.status for r in outcome.rounds[:3]] == ["ok"] * 3
    assert outcome.central_epsilon == pytest.approx(central_epsilon(2.0, 1.0, 3, 1e-5))
    assert outcome.rounds[0].central_epsilon == pytest.approx(per_round)


def test_dirichlet_split_is_skewed_and_complete(digits) -> None:  # type: ignore[no-untyped-def]
    parts = dirichlet_split(digits.y_train, 10, alpha=0.3, seed=0)
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(digits.y_train)))
    dominant = [np.bincount(digits.y_train[p], minlength=10).max() / len(p) for p in parts]
    assert np.mean(dominant) > 0.3  # IID would be ~0.1


def test_the_server_app_runs_in_process_and_journals_rounds_in_its_work_dir(tmp_path: Path, stores: list[Path]) -> None:
    # Prepare: what the deployment engine hands the ServerApp: starting weights and the run config
    from edgefleet.federated.server.server_app import app as server_app
    from edgefleet.federated.server.server_app import load_outcome, read_rounds, write_arrays

    spec = CampaignSpec(model="digits", rounds=2, min_clients=3, max_clients=3)
    write_arrays(tmp_path / "initial.npz", model_to_arrays(build_model("mlp")))
    run_config = {"campaign-id": "cs", "campaign": spec.model_dump_json(), "work-dir": str(tmp_path)}
    grid = InProcessGrid(_nodes(stores[:3], tmp_path))
    # Execute
    try:
        server_app(grid, Context(1, 0, {}, RecordDict(), run_config))
    finally:
        grid.close()
    # Assert
    outcome = load_outcome(tmp_path)
    assert outcome.status == "completed" and len(outcome.rounds) == 2
    assert [r.round for r in read_rounds(tmp_path, 0)] == [1, 2]
    assert [r.round for r in read_rounds(tmp_path, 1)] == [2]
    assert not list(tmp_path.glob("*.db")), "the ServerApp writes no database"
    start = arrays_to_model(build_model("mlp"), model_to_arrays(build_model("mlp")))
    assert set(outcome.arrays.keys()) == set(start.state_dict())


@pytest.mark.parametrize(
    ("spec", "where"),
    [
        ({"round_timeout_s": float("inf")}, "round_timeout_s"), ({"node_wait_s": float("inf")}, "node_wait_s"),
        ({"node_wait_s": 1e12}, "node_wait_s"), ({"learning_rate": float("nan")}, "learning_rate"),
        ({"privacy": {"noise_multiplier": 1.0, "max_epsilon": float("inf")}}, "max_epsilon"),
        ({"privacy": {"noise_multiplier": 1.0, "max_epsilon": 1e9}}, "max_epsilon"),
        ({"privacy": {"noise_multiplier": 1.0, "delta": 0.5}}, "delta"),
    ],
)  # fmt: skip
def test_a_spec_with_unbounded_or_meaningless_values_is_refused(spec: dict[str, object], where: str) -> None:
    with pytest.raises(ValidationError) as refused:
        CampaignSpec.model_validate({"model": "digits"} | spec)
    assert where in str(refused.value)


def test_closing_the_in_process_grid_does_not_wait_for_a_hung_client() -> None:
    from flwr.app import ConfigRecord, Message, MessageType, RecordDict

    from edgefleet.federated.inprocess import InProcessGrid, InProcessNode

    release, entered = threading.Event(), threading.Event()

    def hung(message: Message, _context: object) -> Message:  # a ClientApp stuck in its round
        entered.set()
        release.wait(60)
        return Message(RecordDict(), reply_to=message)

    grid = InProcessGrid([InProcessNode(hung)])
    try:
        [node] = list(grid.get_node_ids())
        task = grid.create_message(RecordDict({"config": ConfigRecord({})}), MessageType.TRAIN, node, "1")
        assert grid.send_and_receive([task], timeout=0.2) == []  # it did not answer within the round
        assert entered.wait(10)
        started = time.monotonic()
        grid.close()
        assert time.monotonic() - started < 2.0, "close() waited for the hung client"
    finally:
        release.set()
