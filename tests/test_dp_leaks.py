"""What travels beside the protected update under DP and under SecAgg+: no exact sample count leaves a
device, declines name no counts, what is still sent is listed in the privacy report, and values beyond
secure aggregation's quantization range are counted, never clipped silently. Real Flower apps, in process."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.app import Context, Message
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.compat.common.recorddict_compat import recorddict_to_fitres

from edgefleet.federated.client.client_app import app as client_app
from edgefleet.federated.client.data import dirichlet_split, fill_sample_store
from edgefleet.federated.disclosure import disclosures
from edgefleet.federated.inprocess import InProcessGrid, InProcessNode
from edgefleet.federated.models import build_model
from edgefleet.federated.server.rounds import run_rounds
from edgefleet.federated.server.strategies import build_strategy
from edgefleet.federated.spec import CampaignSpec
from edgefleet.federated.weights import model_to_arrays
from edgefleet.local.digits import load_digits_data
from edgefleet.protocol import campaign as keys
from edgefleet.protocol.campaign import Decline
from edgefleet.protocol.model_card import PrivacyReport
from tests.test_federated import _nodes

ARCH = {"architecture_args": {"sizes": [64, 10], "standardize": True}}
# One full-batch SGD step per round (deterministic without DP), four clients, no waiting.
BASE = {"model": "digits", "rounds": 1, "min_clients": 4, "max_clients": 4, "batch_size": 10_000,
        "learning_rate": 0.5, "node_wait_s": 0, "max_failed_rounds": 1, **ARCH}  # fmt: skip
LOCAL_DP = {"mode": "local", "noise_multiplier": 1.0, "max_epsilon": 100.0}
DISTRIBUTED_DP = {"mode": "distributed", "noise_multiplier": 2.0, "max_epsilon": 100.0}
COUNT_KEYS = (keys.NUM_EXAMPLES, keys.STEPS, keys.TRAIN_LOSS)


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Four sample stores of a non-IID digits split (318, 265, 401 and 363 samples) and one of 7."""
    digits = load_digits_data()
    root = tmp_path_factory.mktemp("leak-stores")
    paths = []
    for i, idx in enumerate(dirichlet_split(digits.y_train, 4, alpha=1.0, seed=3)):
        fill_sample_store(root / f"d{i}.sqlite", digits.x_train[idx], digits.y_train[idx])
        paths.append(root / f"d{i}.sqlite")
    fill_sample_store(root / "small.sqlite", digits.x_train[:7], digits.y_train[:7])
    paths.append(root / "small.sqlite")
    return paths


class Recorder:
    """Wraps the real ClientApp and keeps every message it got (config before the SecAgg+ mod pops it) and
    every reply it sent: what a server, honest or not, receives."""

    def __init__(self) -> None:
        self.setup_configs: list[dict[str, object]] = []
        self.replies: list[Message] = []

    def __call__(self, message: Message, context: Context) -> Message:
        configs = message.content.config_records.get(RECORD_KEY_CONFIGS)
        if configs is not None and configs.get(Key.STAGE) == Stage.SETUP:
            self.setup_configs.append(dict(configs))
        reply = client_app(message, context)
        self.replies.append(reply)
        return reply


def _run(spec: CampaignSpec, nodes: list[InProcessNode], campaign_id: str, initial=None):  # type: ignore[no-untyped-def]
    initial = initial or model_to_arrays(build_model("mlp", ARCH["architecture_args"]))
    grid = InProcessGrid(nodes)
    try:
        return run_rounds(grid, build_strategy(spec), spec, initial, campaign_id=campaign_id), initial
    finally:
        grid.close()


def _recorded_nodes(stores: list[Path], state: Path) -> tuple[list[InProcessNode], Recorder]:
    recorder = Recorder()
    return _nodes(stores, state, recorder), recorder


def _store_sizes() -> set[int]:
    return {318, 265, 401, 363}


def _disclosed_names(spec: CampaignSpec) -> set[str]:
    return {d.name for d in disclosures(spec)}


def test_under_local_dp_no_count_leaves_a_device_and_the_mean_is_unweighted(tmp_path: Path, stores: list[Path]) -> None:
    # Prepare
    spec = CampaignSpec(**BASE, privacy=LOCAL_DP)
    nodes, recorder = _recorded_nodes(stores[:4], tmp_path)
    # Execute
    outcome, _ = _run(spec, nodes, "local")
    # Assert: no count, no steps, no loss in any reply; only what the privacy report lists
    assert outcome.status == "completed", outcome.reason
    assert len(recorder.replies) == 4
    for reply in recorder.replies:
        metrics = dict(reply.content[keys.METRICS])
        assert not set(COUNT_KEYS) & set(metrics), metrics
        assert set(metrics) <= _disclosed_names(spec), metrics
    # The round record holds no count either
    for entry in outcome.rounds[0].participants:
        assert "examples" not in entry and "loss" not in entry, entry
        assert not {v for v in entry.values() if isinstance(v, int)} & _store_sizes()
    # The server's model is the unweighted mean of what the devices sent
    sent = [reply.content[keys.ARRAYS] for reply in recorder.replies]
    for key in outcome.arrays:
        mean = np.mean([a[key].numpy().astype(np.float64) for a in sent], axis=0)
        np.testing.assert_allclose(outcome.arrays[key].numpy(), mean, atol=1e-6)


def test_under_secure_aggregation_with_dp_every_update_weighs_one(tmp_path: Path, stores: list[Path]) -> None:
    # Prepare
    spec = CampaignSpec(**BASE, secure_aggregation=True, privacy=DISTRIBUTED_DP)
    nodes, recorder = _recorded_nodes(stores[:4], tmp_path)
    # Execute
    outcome, _ = _run(spec, nodes, "ddp")
    # Assert: the server asked for weights of at most 1, and every FitRes in the clear says 1 with no count
    assert outcome.status == "completed", outcome.reason
    assert [c[Key.MAX_WEIGHT] for c in recorder.setup_configs] == [1.0] * 4
    masked = [r for r in recorder.replies if Key.MASKED_PARAMETERS in r.content.config_records[RECORD_KEY_CONFIGS]]
    assert len(masked) == 4
    for reply in masked:
        fitres = recorddict_to_fitres(reply.content, keep_input=True)
        assert fitres.num_examples == 1
        assert not set(COUNT_KEYS) & set(fitres.metrics), fitres.metrics
        assert set(fitres.metrics) <= _disclosed_names(spec), fitres.metrics
    for entry in outcome.rounds[0].participants:
        assert "examples" not in entry, entry
        assert entry["clipped"] == 0  # DP updates lie far inside the range


def test_without_dp_the_counts_and_the_weighted_mean_are_unchanged(tmp_path: Path, stores: list[Path]) -> None:
    nodes, recorder = _recorded_nodes(stores[:4], tmp_path)
    outcome, _ = _run(CampaignSpec(**BASE), nodes, "plain")
    assert outcome.status == "completed", outcome.reason
    assert {p["examples"] for p in outcome.rounds[0].participants} == _store_sizes()
    sent = [(reply.content[keys.ARRAYS], dict(reply.content[keys.METRICS])) for reply in recorder.replies]
    weights = np.array([float(m[keys.NUM_EXAMPLES]) for _, m in sent])  # type: ignore[arg-type]
    assert set(weights.astype(int)) == _store_sizes()
    for key in outcome.arrays:
        mean = np.average([a[key].numpy().astype(np.float64) for a, _ in sent], axis=0, weights=weights)
        np.testing.assert_allclose(outcome.arrays[key].numpy(), mean, atol=1e-6)


@pytest.mark.parametrize("privacy", [None, LOCAL_DP], ids=["no-dp", "local-dp"])
def test_a_decline_names_a_sample_count_only_without_dp(tmp_path: Path, stores: list[Path], privacy) -> None:  # type: ignore[no-untyped-def]
    # Prepare: the fifth device holds 7 samples, the campaign needs 10
    spec = CampaignSpec(**BASE | {"min_clients": 4, "max_clients": 5, "min_samples": 10}, privacy=privacy)
    # Execute
    outcome, _ = _run(spec, _nodes(stores, tmp_path), "few")
    # Assert
    assert outcome.status == "completed", outcome.reason
    [decline] = outcome.rounds[0].declined
    assert decline["code"] == Decline.NO_DATA
    if privacy is None:
        assert decline["reason"] == "dev-4: 7 samples, the campaign needs at least 10"
    else:
        assert decline["reason"].startswith("dev-4: fewer labelled samples than the campaign needs")
        assert "7" not in decline["reason"].removeprefix("dev-4")
    # `campaign status --watch` says who declined the round and why, under the round's line
    from edgefleet.cli.campaign import _decline_lines

    assert _decline_lines(outcome.rounds[0].as_dict()) == [f"  declined (no_data): {decline['reason']}"]


def test_a_budget_decline_under_dp_names_no_epsilon_the_device_reached(tmp_path: Path, stores: list[Path]) -> None:
    # Prepare: noise so low that the first round alone would pass the budget
    spec = CampaignSpec(**BASE | {"max_failed_rounds": 3},
                        privacy={"mode": "local", "noise_multiplier": 0.3, "max_epsilon": 1.0})  # fmt: skip
    # Execute
    outcome, _ = _run(spec, _nodes(stores[:4], tmp_path), "budget")
    # Assert: the reason says which cap, never the spent or projected epsilon (it follows from the sample rate)
    assert outcome.status == "budget_exhausted"
    reasons = sorted(d["reason"] for d in outcome.rounds[0].declined)
    assert reasons == [f"dev-{i}: privacy budget: another round would pass the campaign's max epsilon 1; "
                       "declining to train" for i in range(4)]  # fmt: skip


def test_a_round_all_declined_for_budget_ends_budget_exhausted_even_at_one_failed_round(
    tmp_path: Path, stores: list[Path]
) -> None:
    # Prepare: as above, but the campaign gives up after one failed round
    spec = CampaignSpec(**BASE | {"max_failed_rounds": 1},
                        privacy={"mode": "local", "noise_multiplier": 0.3, "max_epsilon": 1.0})  # fmt: skip
    # Execute
    outcome, _ = _run(spec, _nodes(stores[:4], tmp_path), "budget-once")
    # Assert: the budget stop, not "1 rounds in a row failed"
    assert outcome.status == "budget_exhausted", outcome.reason


def test_a_dead_node_does_not_hold_the_budget_stop_back() -> None:
    from edgefleet.common.flower_compat import unavailable_error_codes
    from edgefleet.federated.server.rounds import RoundRecord, _all_budget_declines

    gone = min(unavailable_error_codes())
    record = RoundRecord(1, "failed", 0.0, declined=[
        {"node": 1, "code": Decline.BUDGET_EXHAUSTED, "reason": "dev-0: privacy budget"},
        {"node": 2, "code": gone, "reason": "Node Unavailable"},
    ])  # fmt: skip
    assert _all_budget_declines(record)
    record.declined[1]["code"] = Decline.NO_DATA  # a device that decided otherwise: not a budget stop
    assert not _all_budget_declines(record)
    assert not _all_budget_declines(RoundRecord(1, "failed", 0.0, declined=[{"node": 2, "code": gone, "reason": ""}]))


@pytest.mark.parametrize(
    ("privacy", "secure"),
    [(None, False), (LOCAL_DP, False), ({"mode": "central", "noise_multiplier": 1.0}, False),
     (DISTRIBUTED_DP, True), (LOCAL_DP, True)],
)  # fmt: skip
def test_the_privacy_report_says_what_the_guarantee_does_not_cover(privacy, secure: bool) -> None:  # type: ignore[no-untyped-def]
    spec = CampaignSpec(**BASE, privacy=privacy, secure_aggregation=secure)
    mode = privacy["mode"] if privacy else "none"
    report = PrivacyReport.model_validate_json(
        PrivacyReport(
            mode=mode, rounds=1, clients=4, secure_aggregation=secure, disclosed=disclosures(spec)
        ).model_dump_json()
    )
    covered = {d.name: d.covered for d in report.disclosed}
    assert all(d.why for d in report.disclosed)
    # Always sent, never covered: the retained state the coordinator selects on, and who took part
    assert covered["training_samples"] is False and covered["participation"] is False
    if mode == "none":
        assert not covered[keys.NUM_EXAMPLES] and not covered[keys.TRAIN_LOSS]
    else:
        assert keys.NUM_EXAMPLES not in covered and keys.TRAIN_LOSS not in covered
    if mode == "local":  # epsilon follows from the sample rate, hence from the dataset's size
        assert covered[keys.EPSILON] is False
    if mode == "distributed":  # one full-batch step per round: epsilon follows from the spec
        assert covered[keys.EPSILON] is True and covered[keys.LOCAL_EPSILON] is True
        assert covered["quantized sum"] is False and "not accounted" in _why(report, "quantized sum").lower()
    if mode == "central":
        assert covered["update"] is False
    if secure:
        assert covered["fitres.num_examples"] is (mode != "none")


def _why(report: PrivacyReport, name: str) -> str:
    return next(d.why for d in report.disclosed if d.name == name)


def test_secure_aggregation_counts_every_value_it_clips_and_changes_nothing_else(
    tmp_path: Path, stores: list[Path]
) -> None:
    # Prepare: a learning rate so large that some values of each update pass 8 * 10000 / n
    spec = {**BASE, "learning_rate": 2000.0}
    nodes, recorder = _recorded_nodes(stores[:4], tmp_path / "plain")
    plain, initial = _run(CampaignSpec(**spec), nodes, "plain")
    counts = {p["device"]: p["examples"] for p in plain.rounds[0].participants}
    updates = {}
    for reply in recorder.replies:
        device = str(reply.content[keys.CLIENT][keys.DEVICE_ID])
        arrays = reply.content[keys.ARRAYS]
        updates[device] = {k: arrays[k].numpy().astype(np.float64) - initial[k].numpy() for k in initial}  # type: ignore[union-attr]
    # What Flower's mod does to each update: scale by the quantized n / 10000, clip to +-8
    scale = {d: round(n / 10_000 * 2**22) / 2**22 for d, n in counts.items()}
    expected_clipped = {d: sum(int(np.sum(np.abs(u * scale[d]) > 8.0)) for u in updates[d].values()) for d in updates}
    assert 0 < sum(expected_clipped.values()) < sum(u.size for d in updates for u in updates[d].values())
    # Execute
    secure, _ = _run(CampaignSpec(**spec, secure_aggregation=True), _nodes(stores[:4], tmp_path / "s"), "secure",
                     initial)  # fmt: skip
    # Assert: every clipped value is counted, per device and in the round's metrics
    assert secure.status == "completed", secure.reason
    record = secure.rounds[0]
    assert {p["device"]: p["clipped"] for p in record.participants} == expected_clipped
    assert record.train_metrics[keys.CLIPPED_VALUES] == sum(expected_clipped.values())
    # ...and the aggregate is the mean of the clipped updates to within the quantization error, no further
    total = sum(scale.values())
    bound = len(updates) * (16.0 / 2**22) / total
    for key in initial:
        clipped_sum = sum(np.clip(updates[d][key] * scale[d], -8.0, 8.0) for d in updates)
        expected = initial[key].numpy() + clipped_sum / total  # type: ignore[union-attr]
        got = secure.arrays[key].numpy().astype(np.float64)
        assert np.max(np.abs(got - expected)) <= bound + 1e-6 * np.max(np.abs(expected)) + 1e-6
        # Where nothing was clipped, that is the plain sample-weighted mean
        untouched = np.all([np.abs(updates[d][key] * scale[d]) <= 8.0 for d in updates], axis=0)
        plain_mean = plain.arrays[key].numpy().astype(np.float64)
        np.testing.assert_allclose(got[untouched], plain_mean[untouched], atol=bound + 1e-3)
