"""Privacy accounting by Opacus's accountants: the epsilon of a composition of DP releases.

The client's ledger (client/privacy.py) composes its DP-SGD rounds; the server composes central DP's
noisy means (server/rounds.py). Both ask the same accountant.
"""

from __future__ import annotations

import functools

from opacus.accountants import create_accountant

__all__ = ["Step", "central_epsilon", "epsilon_of"]

Step = tuple[float, float, int]  # (noise multiplier, sample rate, number of steps): Opacus's history entry


def epsilon_of(history: list[Step], delta: float, accountant: str = "rdp") -> float:
    """Epsilon at ``delta`` of the composition of ``history``, by Opacus's accountant."""
    if not history:
        return 0.0
    return _epsilon(tuple((float(s), float(q), int(n)) for s, q, n in history), delta, accountant)


@functools.lru_cache(maxsize=256)
def _epsilon(history: tuple[Step, ...], delta: float, accountant: str) -> float:
    # One accountant computation costs up to a second of CPU with Poisson sub-sampling; a round asks
    # for the spend so far, the projected spend and (after training) the same projected figure again.
    acc = create_accountant(accountant)
    acc.history = list(history)
    return float(acc.get_epsilon(delta))


def central_epsilon(noise_multiplier: float, sample_rate: float, rounds: int, delta: float) -> float:
    """Client-level epsilon of central DP (Gaussian noise on the clipped mean, each client in a round
    with probability ``sample_rate``): the subsampled Gaussian mechanism composed over ``rounds``."""
    if rounds <= 0:
        return 0.0
    return epsilon_of([(noise_multiplier, min(1.0, sample_rate), rounds)], delta, "rdp")
