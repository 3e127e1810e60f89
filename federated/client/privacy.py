"""Cumulative privacy accounting: a client's epsilon over every round of a campaign, not just the last.

Each DP-SGD round adds (noise multiplier, sample rate, steps) to an Opacus accountant's history.
Flower's Opacus example starts a fresh accountant every round and so reports one round's epsilon;
here the history is persisted per campaign in the node's state dir (atomic writes), and every
figure is the composition of all rounds so far, computed by Opacus's own accountant.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

from edgefleet.common.files import atomic_write
from edgefleet.federated.accounting import Step, epsilon_of
from edgefleet.federated.errors import BudgetExhausted, LocalDataError

__all__ = ["PrivacyLedger"]

log = logging.getLogger(__name__)

@dataclass
class PrivacyLedger:
    """One client's spend in one campaign, persisted as JSON in its state dir."""

    path: Path
    campaign_id: str
    accountant: str
    delta: float
    history: list[Step] = field(default_factory=list)
    noise_multiplier: float | None = None  # fixed at the first round when the campaign gives a target epsilon
    rounds: list[dict[str, float]] = field(default_factory=list)

    @classmethod
    def open(cls, state_dir: Path, campaign_id: str, *, accountant: str, delta: float) -> PrivacyLedger:
        state_dir.mkdir(parents=True, exist_ok=True)
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in campaign_id)
        path = state_dir / f"privacy-{safe}.json"
        if not path.exists():
            return cls(path, campaign_id, accountant, delta)
        try:
            data = json.loads(path.read_text())
            ledger = cls(
                path,
                campaign_id,
                data["accountant"],
                float(data["delta"]),
                [(float(s), float(q), int(n)) for s, q, n in data["history"]],
                data.get("noise_multiplier"),
                list(data.get("rounds", [])),
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # Never restart the count from zero on a damaged file: that would understate the spend.
            raise LocalDataError(f"privacy ledger {path} is unreadable ({exc}); refusing to train") from None
        if ledger.accountant != accountant or not math.isclose(ledger.delta, delta):
            raise LocalDataError(
                f"campaign {campaign_id} changed its accountant/delta ({ledger.accountant}, {ledger.delta} -> "
                f"{accountant}, {delta}); the spend so far cannot be restated"
            )
        return ledger

    @property
    def epsilon(self) -> float:
        return epsilon_of(self.history, self.delta, self.accountant)

    def projected(self, step: Step) -> float:
        return epsilon_of(self._merged(step), self.delta, self.accountant)

    def check(self, step: Step, max_epsilon: float) -> float:
        """The epsilon after ``step``; raises BudgetExhausted if that passes ``max_epsilon``."""
        spent, after = self.epsilon, self.projected(step)
        if after > max_epsilon:
            raise BudgetExhausted(
                f"privacy budget: this round would raise epsilon from {spent:.3f} to {after:.3f} "
                f"(delta {self.delta:g}), above the campaign's max {max_epsilon:g}; declining to train",
                spent=spent,
                projected=after,
                max_epsilon=max_epsilon,
            )
        return after

    def record(self, step: Step, server_round: int) -> float:
        """Add a finished round's steps and persist; returns the cumulative epsilon."""
        self.history = self._merged(step)
        epsilon = self.epsilon
        self.rounds.append({"round": server_round, "steps": step[2], "epsilon": epsilon})
        payload = {
            "campaign_id": self.campaign_id,
            "accountant": self.accountant,
            "delta": self.delta,
            "noise_multiplier": self.noise_multiplier,
            "history": self.history,
            "rounds": self.rounds,
        }
        atomic_write(self.path, json.dumps(payload, indent=1).encode())
        log.info("campaign %s round %d: epsilon %.3f at delta %g", self.campaign_id, server_round, epsilon, self.delta)
        return epsilon

    def _merged(self, step: Step) -> list[Step]:
        history = list(self.history)
        if history and history[-1][:2] == step[:2]:
            s, q, n = history[-1]
            history[-1] = (s, q, n + step[2])
        elif step[2] > 0:
            history.append(step)
        return history
