"""The campaign's round loop over a Flower Grid: sample, send, wait with a deadline, aggregate.

It drives the strategy through its public interface (``configure_train`` / ``aggregate_train``)
instead of ``Strategy.start`` so that a round never waits forever for nodes that left, completes
with whoever answered if at least ``min_clients`` did, records who took part, who declined and why,
and can be aborted between rounds.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol, cast

from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp.grid import Grid
from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping, Strategy

from edgefleet.common.flower_compat import unavailable_error_codes
from edgefleet.federated.accounting import central_epsilon
from edgefleet.federated.secure_aggregation import secure_round
from edgefleet.federated.spec import CampaignSpec
from edgefleet.protocol import campaign as keys
from edgefleet.protocol.campaign import Decline, decline_code

__all__ = ["CampaignObserver", "CampaignOutcome", "RoundRecord", "moving_average", "run_rounds"]

log = logging.getLogger(__name__)

EvaluateFn = Callable[[int, ArrayRecord], dict[str, float]]
Status = Literal["completed", "aborted", "failed", "budget_exhausted"]


@dataclass
class RoundRecord:
    round: int
    status: Literal["ok", "failed"]
    started_at: float
    duration_s: float = 0.0
    sampled: int = 0
    # device, and without DP examples and loss; under DP epsilon, noise_multiplier (no count: see disclosure.py)
    participants: list[dict[str, Any]] = field(default_factory=list)
    declined: list[dict[str, Any]] = field(default_factory=list)  # device/node, code, reason
    missing: int = 0  # sampled nodes that did not answer in time
    train_metrics: dict[str, float] = field(default_factory=dict)
    evaluation: dict[str, float] = field(default_factory=dict)
    # spec.device_evaluation: the devices' own loss/accuracy, weighted by samples; "devices" answered
    device_evaluation: dict[str, float] = field(default_factory=dict)
    central_epsilon: float | None = None
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class CampaignOutcome:
    status: Status
    arrays: ArrayRecord
    rounds: list[RoundRecord]
    reason: str = ""
    initial_evaluation: dict[str, float] = field(default_factory=dict)
    client_epsilon: dict[str, float] = field(default_factory=dict)  # local DP: latest cumulative, per device
    central_epsilon: float | None = None


class CampaignObserver(Protocol):
    def round_finished(self, record: RoundRecord) -> None: ...

    def should_abort(self) -> bool: ...


class _Quiet:
    def round_finished(self, record: RoundRecord) -> None:
        pass

    def should_abort(self) -> bool:
        return False


def run_rounds(
    grid: Grid,
    strategy: Strategy,
    spec: CampaignSpec,
    initial: ArrayRecord,
    *,
    campaign_id: str,
    evaluate_fn: EvaluateFn | None = None,
    observer: CampaignObserver | None = None,
) -> CampaignOutcome:
    observer = observer or _Quiet()
    arrays = initial
    average = initial  # what the campaign yields: ``arrays`` itself unless spec.server_ema is set
    outcome = CampaignOutcome("completed", arrays, [])
    if evaluate_fn is not None:
        outcome.initial_evaluation = evaluate_fn(0, arrays)
    central = isinstance(strategy, DifferentialPrivacyServerSideFixedClipping)
    releases = 0
    failed_in_a_row = 0
    for server_round in range(1, spec.rounds + 1):
        if observer.should_abort():
            outcome.status, outcome.reason = "aborted", f"aborted before round {server_round}"
            break
        record = RoundRecord(server_round, "failed", time.time())
        started = time.monotonic()
        if central and spec.privacy is not None:
            after = _central_epsilon(spec, releases + 1)
            if after > spec.privacy.max_epsilon:
                record.reason = (
                    f"central DP budget: another round would raise epsilon from {_central_epsilon(spec, releases):.3f}"
                    f" to {after:.3f} (delta {spec.privacy.delta:g}), above max {spec.privacy.max_epsilon:g}"
                )
                outcome.status, outcome.reason = "budget_exhausted", record.reason
                _finish(record, started, outcome, observer)
                break
        new_arrays = _one_round(grid, strategy, spec, arrays, server_round, campaign_id, record, central)
        if new_arrays is not None:
            arrays = new_arrays
            average = moving_average(average, arrays, spec.server_ema) if spec.server_ema else arrays
            record.status = "ok"
            failed_in_a_row = 0
            if evaluate_fn is not None:
                record.evaluation = evaluate_fn(server_round, average)
            if spec.device_evaluation:
                record.device_evaluation = _evaluate_on_devices(grid, spec, average, server_round, campaign_id)
            if central:
                releases += 1
                record.central_epsilon = outcome.central_epsilon = _central_epsilon(spec, releases)
        else:
            failed_in_a_row += 1
        for p in record.participants:
            if "epsilon" in p:
                outcome.client_epsilon[p["device"]] = p["epsilon"]
        _finish(record, started, outcome, observer)
        # The budget first: a round every device declined for its budget ended the campaign's privacy, not
        # its training (even where max_failed_rounds is 1).
        if record.status == "failed" and _all_budget_declines(record):
            outcome.status, outcome.reason = "budget_exhausted", record.reason
            break
        if failed_in_a_row >= spec.max_failed_rounds:
            outcome.status = "failed"
            outcome.reason = f"{failed_in_a_row} rounds in a row failed; last: {record.reason}"
            break
    outcome.arrays = average
    return outcome


def moving_average(average: ArrayRecord, latest: ArrayRecord, decay: float) -> ArrayRecord:
    """decay * average + (1 - decay) * latest, array by array, in each array's own dtype."""
    blended = {}
    for key, array in latest.items():
        new = array.numpy()
        blended[key] = Array((decay * average[key].numpy() + (1.0 - decay) * new).astype(new.dtype, copy=False))
    return ArrayRecord(blended)


def _central_epsilon(spec: CampaignSpec, releases: int) -> float:
    assert spec.privacy is not None and spec.privacy.noise_multiplier is not None
    return central_epsilon(spec.privacy.noise_multiplier, 1.0, releases, spec.privacy.delta)


def _finish(record: RoundRecord, started: float, outcome: CampaignOutcome, observer: CampaignObserver) -> None:
    record.duration_s = time.monotonic() - started
    outcome.rounds.append(record)
    log.info("round %d %s: %d answered, %d declined, %d missing %s", record.round, record.status,
             len(record.participants), len(record.declined), record.missing, record.reason)  # fmt: skip
    observer.round_finished(record)


def _all_budget_declines(record: RoundRecord) -> bool:
    """No device trained, at least one declined for its budget, and every other reply is Flower's for a node
    that never answered (a dead node must not hold the budget stop back by a round)."""
    gone = unavailable_error_codes()
    codes = [d["code"] for d in record.declined]
    return (
        not record.participants
        and Decline.BUDGET_EXHAUSTED in codes
        and all(c == Decline.BUDGET_EXHAUSTED or c in gone for c in codes)
    )


def _one_round(
    grid: Grid,
    strategy: Strategy,
    spec: CampaignSpec,
    arrays: ArrayRecord,
    server_round: int,
    campaign_id: str,
    record: RoundRecord,
    central: bool,
) -> ArrayRecord | None:
    if spec.secure_aggregation:
        return _secure_one_round(grid, spec, arrays, server_round, campaign_id, record)
    # Central DP's accountant needs the same number of clients in every round.
    want = spec.max_clients if central else spec.min_clients
    connected = _wait_for_nodes(grid, want, spec.node_wait_s)
    if len(connected) < want:
        record.reason = f"{len(connected)} clients connected, the round needs {want}"
        return None
    sample = spec.max_clients if central else min(spec.max_clients, len(connected))
    inner: Any = strategy.strategy if central else strategy  # type: ignore[attr-defined]
    # Exactly ``sample`` nodes: the fraction rounds down to 0 and the minimum decides.
    inner.fraction_train, inner.min_train_nodes, inner.min_available_nodes = 1e-9, sample, sample
    config = ConfigRecord({keys.CAMPAIGN_ID: campaign_id, keys.CAMPAIGN: spec.model_dump_json()})
    messages = list(strategy.configure_train(server_round, arrays, config, grid))
    record.sampled = len(messages)
    replies = list(grid.send_and_receive(messages, timeout=spec.round_timeout_s))
    record.missing = len(messages) - len(replies)
    ok: list[Message] = []
    for reply in replies:
        if reply.has_error():
            record.declined.append(
                {"node": reply.metadata.src_node_id, "code": reply.error.code, "reason": reply.error.reason or ""}
            )
            continue
        ok.append(reply)
        metrics = dict(reply.content[keys.METRICS])
        client = reply.content.config_records.get(keys.CLIENT)
        entry: dict[str, Any] = {"device": str(client[keys.DEVICE_ID]) if client else str(reply.metadata.src_node_id)}
        if spec.privacy is None:  # under DP no count is sent, nor kept if a device sent one
            entry["examples"] = int(cast(int, metrics.get(keys.NUM_EXAMPLES, 0)))
        if keys.TRAIN_LOSS in metrics and spec.privacy is None:
            entry["loss"] = float(cast(float, metrics[keys.TRAIN_LOSS]))
        if keys.EPSILON in metrics:
            entry["epsilon"] = float(cast(float, metrics[keys.EPSILON]))
            entry["noise_multiplier"] = float(cast(float, metrics.get(keys.NOISE_MULTIPLIER, 0.0)))
        record.participants.append(entry)
    if len(ok) < spec.min_clients or (central and len(ok) != sample):
        need = sample if central else spec.min_clients
        record.reason = (
            f"{len(ok)} of {len(messages)} sampled clients trained (need {need}); "
            f"{len(record.declined)} declined, {record.missing} did not answer within {spec.round_timeout_s:g} s"
        )
        return None
    new_arrays, aggregated = strategy.aggregate_train(server_round, ok)
    if new_arrays is None:
        record.reason = "the strategy could not aggregate the updates"
        return None
    record.train_metrics = {k: float(v) for k, v in dict(aggregated or {}).items() if isinstance(v, int | float)}
    return new_arrays


def _secure_one_round(
    grid: Grid, spec: CampaignSpec, arrays: ArrayRecord, server_round: int, campaign_id: str, record: RoundRecord
) -> ArrayRecord | None:
    """A round through SecAgg+: the same sampling, deadline and minimum, but the server only ever
    holds the mean of the updates (sample-weighted without DP, unweighted under DP)."""
    connected = _wait_for_nodes(grid, spec.min_clients, spec.node_wait_s)
    if len(connected) < spec.min_clients:
        record.reason = f"{len(connected)} clients connected, the round needs {spec.min_clients}"
        return None
    nodes = random.sample(connected, min(spec.max_clients, len(connected)))
    config: dict[str, Any] = {keys.CAMPAIGN_ID: campaign_id, keys.CAMPAIGN: spec.model_dump_json(),
                              keys.SERVER_ROUND: server_round}  # fmt: skip
    if spec.strategy == "fedprox":
        config[keys.PROXIMAL_MU] = spec.proximal_mu
    record.sampled = len(nodes)
    outcome = secure_round(grid, arrays, nodes, config, server_round=server_round,
                           min_clients=spec.min_clients, timeout_s=spec.round_timeout_s,
                           dp=spec.privacy is not None)  # fmt: skip
    for node, reason in outcome.failures:
        record.declined.append({"node": node, "code": decline_code(reason), "reason": reason})
    total = 0
    loss = 0.0
    clipped = 0
    for node, res in outcome.results:
        m = res.metrics
        entry: dict[str, Any] = {"device": str(m.get(keys.DEVICE_ID, node))}
        if spec.privacy is None:  # under DP every FitRes says 1: no count is sent
            entry["examples"] = res.num_examples
        for key, name in ((keys.TRAIN_LOSS, "loss"), (keys.EPSILON, "epsilon"),
                          (keys.NOISE_MULTIPLIER, "noise_multiplier"),
                          (keys.LOCAL_EPSILON, "local_epsilon")):  # fmt: skip
            if key in m and (spec.privacy is None or key != keys.TRAIN_LOSS):
                entry[name] = float(cast(float, m[key]))
        if keys.CLIPPED_VALUES in m:
            entry["clipped"] = int(cast(int, m[keys.CLIPPED_VALUES]))
            clipped += entry["clipped"]
        record.participants.append(entry)
        if "loss" in entry:
            total += res.num_examples
            loss += res.num_examples * entry["loss"]
    record.missing = max(0, len(nodes) - len(outcome.results) - len(outcome.failures))
    if outcome.arrays is None:
        record.reason = (
            f"secure aggregation did not complete: {len(outcome.results)} of {len(nodes)} sampled clients sent "
            f"masked updates (need {spec.min_clients}); {len(outcome.failures)} failed, {record.missing} did not "
            f"answer within {spec.round_timeout_s:g} s"
        )
        return None
    record.train_metrics = {keys.TRAIN_LOSS: loss / total} if total else {}
    # Values beyond the quantization range were clipped by the devices' SecAgg+ mod: the aggregate is not
    # the mean of the updates there. Counted in the record, never silent.
    record.train_metrics[keys.CLIPPED_VALUES] = float(clipped)
    if clipped:
        log.warning("round %d: %d update values were beyond secure aggregation's range and were clipped; "
                    "the aggregate differs from the mean of the updates there", server_round, clipped)  # fmt: skip
    return outcome.arrays


def _evaluate_on_devices(
    grid: Grid, spec: CampaignSpec, arrays: ArrayRecord, server_round: int, campaign_id: str
) -> dict[str, float]:
    """Send the global model to up to max_clients connected devices; their metrics weighted by samples.
    Devices that decline or do not answer within the round timeout are left out, never waited for."""
    nodes = list(grid.get_node_ids())[: spec.max_clients]
    config = ConfigRecord(
        {keys.CAMPAIGN_ID: campaign_id, keys.CAMPAIGN: spec.model_dump_json(), keys.SERVER_ROUND: server_round}
    )
    messages = [
        Message(
            RecordDict({keys.ARRAYS: arrays, keys.CONFIG: config}), dst_node_id=node, message_type=MessageType.EVALUATE
        )
        for node in nodes
    ]
    metrics = [
        dict(reply.content[keys.METRICS])
        for reply in grid.send_and_receive(messages, timeout=spec.round_timeout_s)
        if not reply.has_error()
    ]
    weights = [float(cast(float, m.get(keys.NUM_EXAMPLES, 0))) for m in metrics]
    total = sum(weights)
    if not total:
        return {}
    result = {"devices": float(len(metrics)), "examples": total}
    for key in (keys.EVAL_LOSS, keys.EVAL_ACCURACY):
        if all(key in m for m in metrics):
            name = key.removeprefix("eval-")
            result[name] = sum(w * float(cast(float, m[key])) for w, m in zip(weights, metrics, strict=True)) / total
    return result


def _wait_for_nodes(grid: Grid, want: int, wait_s: float) -> list[int]:
    deadline = time.monotonic() + wait_s
    while True:
        nodes = list(grid.get_node_ids())
        if len(nodes) >= want or time.monotonic() >= deadline:
            return nodes
        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
