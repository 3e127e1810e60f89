"""Secure aggregation of a round's updates with Flower's SecAgg+ protocol: the server learns only the
sample-weighted sum of the clients' updates, never one client's.

Flower ships SecAgg+ as ``SecAggPlusWorkflow`` (server, four message stages over the Grid) and
``secaggplus_mod`` (client), written for its legacy Strategy interface. ``secure_round`` runs one
round of that workflow over our Grid with a small legacy strategy that only hands out the round's
instructions and keeps what comes back; the campaign loop stays in ``federated.rounds``.

What travels: each client sends ``n * (w_client - w_global)`` (its update weighted by its sample
count ``n``), quantized, and masked with pairwise masks (X25519 key agreement) and a private mask
whose seeds are Shamir-shared among its neighbours, so dropped clients can be unmasked without
revealing anyone's update. The server adds the global weights back to the weighted mean of the
updates. The per-client metrics (sample count, epsilon; the loss only without DP) stay visible.

Quantization: values are clipped to +-``CLIPPING_RANGE`` after scaling by ``n / MAX_WEIGHT`` and
mapped onto 2**22 levels; a client uses at most ``MAX_WEIGHT`` samples per round (client_app).
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
    "MAX_WEIGHT",
    "SecureRound",
    "array_names",
    "is_secure_message",
    "secure_round",
    "update_parameters",
]

MAX_WEIGHT = 10_000  # samples one client may weigh in with per round
CLIPPING_RANGE = 8.0  # |n * update / MAX_WEIGHT| per value; an update is at most 8 * MAX_WEIGHT / n




def is_secure_message(content: RecordDict) -> bool:
    """Whether a train message is a stage of the SecAgg+ protocol."""
    return secaggplus().RECORD_KEY_CONFIGS in content.config_records


@dataclass
class SecureRound:
    """What one securely aggregated round gave: the new global weights (None if it failed), each
    answering client's FitRes (metrics and sample count, no weights) and the failures' reasons."""

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
) -> SecureRound:
    """One round of SecAgg+ over ``node_ids``: the sample-weighted mean of their updates added to
    ``arrays``. The round fails (arrays None) if fewer than ``min_clients`` masked updates arrive or
    too few key shares come back to unmask them.

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
        max_weight=float(MAX_WEIGHT),
        clipping_range=CLIPPING_RANGE,
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
