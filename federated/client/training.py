"""One client's local work in a round: SGD or DP-SGD (Opacus) on its samples, with FedProx's term."""

from __future__ import annotations

import logging
import math
import secrets
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, TensorDataset

from edgefleet.federated.accounting import Step, epsilon_of
from edgefleet.federated.client.privacy import PrivacyLedger
from edgefleet.federated.errors import LocalDataError
from edgefleet.federated.scoring import LocalData, loss_fn, tensors

__all__ = ["TrainConfig", "TrainResult", "train"]

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    epochs: int = 1
    batch_size: int = 32
    learning_rate: float = 0.05
    momentum: float = 0.0
    loss: str = "cross_entropy"
    proximal_mu: float = 0.0
    # Local DP; noise_multiplier None means no DP.
    noise_multiplier: float | None = None
    target_epsilon: float | None = None
    rounds: int = 1
    clip_norm: float = 1.0
    max_epsilon: float = float("inf")
    # Distributed DP: this client adds 1/sqrt(noise_shares) of the noise; the securely aggregated sum
    # of at least noise_shares clients' updates carries all of it. The ledger accounts the sum's noise.
    noise_shares: int = 1


@dataclass
class TrainResult:
    num_examples: int
    loss: float
    steps: int
    epsilon: float | None = None  # cumulative, at the ledger's delta
    # Distributed DP: the cumulative epsilon of this client's own update, with only its share of the
    # noise (what is left if secure aggregation is broken)
    local_epsilon: float | None = None
    noise_multiplier: float | None = None
    sample_rate: float | None = None


def train(
    model: torch.nn.Module, data: LocalData, cfg: TrainConfig, *, ledger: PrivacyLedger | None, server_round: int
) -> TrainResult:
    """Train ``model`` in place from its current (global) weights.

    With DP, the accountant step this round will add is checked against ``cfg.max_epsilon`` before
    any training (BudgetExhausted), and recorded in the ledger after it.
    """
    if len(data) == 0:
        raise LocalDataError("no training samples on this device")
    x, y = tensors(data, cfg.loss)
    global_params = [p.detach().clone() for p in model.parameters()]
    criterion = loss_fn(cfg.loss)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.learning_rate, momentum=cfg.momentum)
    loader = DataLoader(TensorDataset(x, y), batch_size=min(cfg.batch_size, len(x)), shuffle=True)
    dp = cfg.noise_multiplier is not None or cfg.target_epsilon is not None
    step: Step | None = None
    if dp:
        if ledger is None:
            raise LocalDataError("DP training needs a privacy ledger")
        from opacus import PrivacyEngine
        from opacus.accountants.utils import get_noise_multiplier

        sample_rate = 1.0 / len(loader)
        steps = cfg.epochs * len(loader)
        sigma = cfg.noise_multiplier or ledger.noise_multiplier
        if sigma is None:
            # The noise for the whole campaign is fixed here, from this client's data size at round one.
            sigma = get_noise_multiplier(
                target_epsilon=float(cfg.target_epsilon or 0),
                target_delta=ledger.delta,
                sample_rate=sample_rate,
                steps=steps * cfg.rounds,
                accountant=ledger.accountant,
            )
            ledger.noise_multiplier = sigma
        step = (float(sigma), float(sample_rate), int(steps))
        ledger.check(step, cfg.max_epsilon)
        engine = PrivacyEngine(accountant=ledger.accountant)
        # A fresh OS-random generator for the noise: seeding by round or client would repeat noise.
        noise = torch.Generator().manual_seed(secrets.randbits(63))
        model, optimizer, loader = engine.make_private(
            module=model,
            optimizer=optimizer,
            data_loader=loader,
            noise_multiplier=sigma / math.sqrt(cfg.noise_shares),
            max_grad_norm=cfg.clip_norm,
            poisson_sampling=True,
            noise_generator=noise,
        )
    model.train()
    total, count = 0.0, 0
    for _ in range(cfg.epochs):
        for xb, yb in loader:
            if len(xb) == 0:  # Poisson sampling can draw an empty batch
                continue
            optimizer.zero_grad()
            loss = criterion(model(xb), yb)
            if cfg.proximal_mu > 0 and not dp:
                loss = loss + cfg.proximal_mu / 2 * _proximal(model, global_params)
            loss.backward()
            optimizer.step()
            if cfg.proximal_mu > 0 and dp:
                # FedProx under DP: the proximal gradient mu (w - w_global) uses no data, so it is applied
                # after the privatized step (post-processing) instead of through per-sample gradients.
                with torch.no_grad():
                    for p, g in zip(model.parameters(), global_params, strict=True):
                        p.sub_(cfg.learning_rate * cfg.proximal_mu * (p - g))
            total += float(loss.detach()) * len(xb)
            count += len(xb)
    result = TrainResult(len(data), total / max(count, 1), cfg.epochs * len(loader))
    if step is not None and ledger is not None:
        result.epsilon = ledger.record(step, server_round)
        result.noise_multiplier, result.sample_rate = step[0], step[1]
        if cfg.noise_shares > 1:
            own = [(s / math.sqrt(cfg.noise_shares), q, n) for s, q, n in ledger.history]
            result.local_epsilon = epsilon_of(own, ledger.delta, ledger.accountant)
    return result


def _proximal(model: torch.nn.Module, global_params: list[torch.Tensor]) -> torch.Tensor:
    return sum(((p - g) ** 2).sum() for p, g in zip(model.parameters(), global_params, strict=True))  # type: ignore[return-value]
