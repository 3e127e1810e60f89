"""Secure aggregation of a round's updates with Flower's SecAgg+ protocol: the server learns only the
weighted sum of the clients' updates (and the sum of their weights), never one client's.

Flower ships SecAgg+ as ``SecAggPlusWorkflow`` (server, four message stages over the Grid) and
``secaggplus_mod`` (client), written for its legacy Strategy interface. ``secure_round`` runs one
round of that workflow over our Grid with a small legacy strategy that only hands out the round's
instructions and keeps what comes back; the campaign loop stays in ``federated.rounds``.

What travels: each client sends ``w * (w_client - w_global) / max_weight``, quantized, and masked with
pairwise masks (X25519 key agreement) and a private mask whose seeds are Shamir-shared among its
neighbours, so dropped clients can be unmasked without revealing anyone's update. The weight ``w``
is the client's sample count (at most ``MAX_WEIGHT``) without DP; under DP every client weighs 1 and
``max_weight`` is 1, so no sample count is sent and the server's mean is unweighted (``weight_of``,
``weight_cap``).
The server adds the global weights back to the mean of the updates. The FitRes beside the masked
vector is in the clear: its ``num_examples`` (the weight) and metrics (see federated.disclosure).

Quantization: Flower's mod scales an update by ``w / max_weight``, clips every value to
+-``CLIPPING_RANGE`` and maps it onto ``QUANTIZATION_RANGE`` levels by stochastic rounding; the sum is
taken modulo 2**32, which never wraps for at most 1000 clients (1000 * 2**22 < 2**32). A value is
therefore sent exactly up to one quantization step unless it lies beyond ``update_bound``; the client
counts those (``values_beyond_range``) and reports the count, so clipping is never silent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.common import (
    EvaluateIns,
    FitIns,
    FitRes,
    Parameters,
    Scalar,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import Strategy as LegacyStrategy
from flwr.serverapp.grid import Grid

from edgefleet.common.flower_compat import secaggplus
from edgefleet.federated.weights import array_to_numpy
from edgefleet.protocol.campaign import ARRAY_NAMES

__all__ = [
    "CLIPPING_RANGE",
    "MAX_WEIGHT",
    "QUANTIZATION_RANGE",
    "SecureRound",
    "array_names",
    "is_secure_message",
    "secure_round",
    "update_bound",
    "update_parameters",
    "values_beyond_range",
    "weight_cap",
    "weight_of",
]

MAX_WEIGHT = 10_000  # samples one client may weigh in with per round (without DP)
CLIPPING_RANGE = 8.0  # |w * update / max_weight| per value: an update value is at most 8 * max_weight / w
QUANTIZATION_RANGE = 2**22  # levels over [-CLIPPING_RANGE, CLIPPING_RANGE]: a step of 16 / 2**22 (3.8e-6)


def weight_cap(dp: bool) -> float:
    """The largest weight one client's update may carry: its sample count without DP, 1 under DP."""
    return 1.0 if dp else float(MAX_WEIGHT)


def weight_of(num_examples: int, *, dp: bool) -> int:
    """The weight a client gives its update (its FitRes.num_examples, in the clear): under DP always 1,
    since the count reveals exactly the add/remove-one-sample change the guarantee is about."""
    return 1 if dp else min(num_examples, MAX_WEIGHT)


def _scale(weight: int, max_weight: float) -> float:
    # Flower's mod quantizes the weight ratio to QUANTIZATION_RANGE levels before scaling by it.
    return round(weight / max_weight * QUANTIZATION_RANGE) / QUANTIZATION_RANGE


def update_bound(weight: int, max_weight: float) -> float:
    """The largest |value| of an update that SecAgg+ sends unclipped (to within one quantization step)."""
    return CLIPPING_RANGE / _scale(weight, max_weight)


def values_beyond_range(update: Parameters, weight: int, max_weight: float) -> int:
    """How many values of ``update`` Flower's mod will clip to +-CLIPPING_RANGE after scaling."""
    scale = _scale(weight, max_weight)
    return sum(int(np.count_nonzero(np.abs(u * scale) > CLIPPING_RANGE)) for u in parameters_to_ndarrays(update))


def is_secure_message(content: RecordDict) -> bool:
    """Whether a train message is a stage of the SecAgg+ protocol."""
    return secaggplus().RECORD_KEY_CONFIGS in content.config_records


@dataclass
class SecureRound:
    """What one securely aggregated round gave: the new global weights (None if it failed), each
    answering client's FitRes (metrics and weight, no update) and the failures' reasons."""

    arrays: ArrayRecord | None
    results: list[tuple[int, FitRes]] = field(default_factory=list)
    failures: list[tuple[int, str]] = field(default_factory=list)  # (node id, reason)


class _Node(ClientProxy):
    """The workflow only reads ``node_id`` of the proxies its strategy returns."""

    def __init__(self, node_id: int) -> None:
        super().__init__(str(node_id))
        self.node_id = node_id

    def _unused(self, *_: Any, **__: Any) -> Any:
        raise NotImplementedError("secure aggregation talks to nodes through the Grid, not through proxies")

    get_properties = get_parameters = fit = evaluate = reconnect = _unused


class _FailureRecorder:
    """Passes the workflow's messages to the Grid and keeps the reasons of error replies: when a stage
    leaves too few nodes the workflow halts without reporting its failures."""

    def __init__(self, grid: Grid) -> None:
        self.grid = grid
        self.failures: list[tuple[int, str]] = []

    def send_and_receive(self, messages: Any, *, timeout: float | None = None) -> list[Message]:
        replies = list(self.grid.send_and_receive(messages, timeout=timeout))
        for reply in replies:
            if reply.has_error():
                self.failures.append((reply.metadata.src_node_id, reply.error.reason or f"error {reply.error.code}"))
        return replies

    def __getattr__(self, name: str) -> Any:
        return getattr(self.grid, name)


class _OneRound(LegacyStrategy):
    """Hands out one round's FitIns to given nodes and keeps the aggregate the workflow computed."""

    def __init__(self, node_ids: list[int], config: dict[str, Scalar]) -> None:
        self.node_ids, self.config = node_ids, config
        self.aggregate: Parameters | None = None
        self.results: list[tuple[int, FitRes]] = []

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        return None

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        return [(_Node(n), FitIns(parameters, dict(self.config))) for n in self.node_ids]

    def aggregate_fit(
        self, server_round: int, results: list[tuple[ClientProxy, FitRes]], failures: list[Any]
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        # Every FitRes carries the same aggregate (the workflow's weighted mean); the rest is per client.
        self.results = [(proxy.node_id, res) for proxy, res in results]
        self.aggregate = results[0][1].parameters if results else None
        return self.aggregate, {}

    def configure_evaluate(self, *_: Any) -> list[tuple[ClientProxy, EvaluateIns]]:
        return []

    def aggregate_evaluate(self, *_: Any) -> tuple[float | None, dict[str, Scalar]]:
        return None, {}

    def evaluate(self, *_: Any) -> tuple[float, dict[str, Scalar]] | None:
        return None


def secure_round(
    grid: Grid,
    arrays: ArrayRecord,
    node_ids: list[int],
    config: dict[str, Scalar],
    *,
    server_round: int,
    min_clients: int,
    timeout_s: float,
    dp: bool = False,
) -> SecureRound:
    """One round of SecAgg+ over ``node_ids``: the mean of their updates (sample-weighted without DP,
    unweighted under ``dp``) added to ``arrays``. The round fails (arrays None) if fewer than
    ``min_clients`` masked updates arrive or too few key shares come back to unmask them.

    Every node holds a share of every other's secrets (one neighbourhood), and any
    ``min_clients`` of them can unmask (at least 2): a dropout tolerance equal to the campaign's.
    """
    flower = secaggplus()
    names = list(arrays.keys())
    weights = [arrays[k].numpy() for k in names]
    strategy = _OneRound(node_ids, {**config, ARRAY_NAMES: ",".join(names)})
    state = RecordDict(
        {
            flower.MAIN_PARAMS_RECORD: ArrayRecord({str(i): Array(w) for i, w in enumerate(weights)}),
            flower.MAIN_CONFIGS_RECORD: ConfigRecord({flower.WorkflowKey.CURRENT_ROUND: server_round}),
        }
    )
    context = flower.LegacyContext(Context(0, 0, {}, state, {}), strategy=strategy)
    workflow = flower.SecAggPlusWorkflow(
        num_shares=1.0,  # every sampled node is a neighbour of every other
        # Unmasking needs this many nodes' key shares, and the workflow stops before unmasking when
        # fewer masked updates arrived: the server never learns a sum of fewer than min_clients.
        reconstruction_threshold=max(2, min(min_clients, len(node_ids))),
        max_weight=weight_cap(dp),
        clipping_range=CLIPPING_RANGE,
        quantization_range=QUANTIZATION_RANGE,
        timeout=timeout_s,
    )
    recorder = _FailureRecorder(grid)
    workflow(cast(Grid, recorder), context)
    outcome = SecureRound(None, strategy.results, recorder.failures)
    if strategy.aggregate is None:
        return outcome
    mean_update = parameters_to_ndarrays(strategy.aggregate)
    if len(mean_update) != len(weights) or any(u.shape != w.shape for u, w in zip(mean_update, weights, strict=True)):
        outcome.failures.append((0, "the unmasked aggregate does not have the model's shapes"))
        return outcome
    outcome.arrays = ArrayRecord(
        {k: Array((w + u).astype(w.dtype, copy=False)) for k, w, u in zip(names, weights, mean_update, strict=True)}
    )
    return outcome


def update_parameters(names: list[str], before: ArrayRecord, after: ArrayRecord) -> Parameters:
    """A client's update (after - before) in the order of ``names``, as the SecAgg+ mod takes it."""
    return ndarrays_to_parameters(
        [array_to_numpy(after[k]).astype(np.float64) - array_to_numpy(before[k]).astype(np.float64) for k in names]
    )


def array_names(config: ConfigRecord) -> list[str]:
    return [n for n in str(cast(str, config[ARRAY_NAMES])).split(",") if n]
