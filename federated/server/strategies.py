"""The campaign's Flower strategy: FedAvg, FedProx, FedAdam, FedMedian or Krum, optionally wrapped for
central DP with Flower's server-side clipping wrapper. Without DP updates are weighted by their sample
counts; under any DP mode every update weighs the same (devices send no count).

Central DP is accounted by the campaign loop with Opacus's RDP accountant (Flower's own accountant
needs the optional ``dp-accounting`` package): each released aggregate is one Gaussian mechanism
with the wrapper's noise multiplier, with no amplification claimed for sampling, and a round is
released only when every sampled client answered (fewer would raise the sensitivity of the mean).
"""

from __future__ import annotations

from typing import Any

from flwr.serverapp.strategy import (
    DifferentialPrivacyServerSideFixedClipping,
    FedAdam,
    FedAvg,
    FedMedian,
    FedProx,
    Krum,
    Strategy,
)

from edgefleet.federated.spec import CampaignSpec
from edgefleet.protocol import campaign as keys

__all__ = ["build_strategy"]


def build_strategy(spec: CampaignSpec) -> Strategy:
    """The strategy for ``spec``.

    Node sampling is left to the campaign loop (it sets the fraction per round), so the minimums
    here are the campaign's and ``min_available_nodes`` never makes Flower wait on its own.
    """
    central = spec.privacy is not None and spec.privacy.mode == "central"
    common: dict[str, Any] = {
        "min_train_nodes": spec.min_clients,
        "min_evaluate_nodes": 0,
        "min_available_nodes": spec.min_clients,
        "fraction_evaluate": 0.0,  # evaluation runs on the server's held-out data, not on devices
        # Under any DP mode the mean is unweighted: a device's sample count would reveal exactly the
        # add/remove-one-sample change the guarantee is about, so devices do not send it.
        "weighted_by_key": keys.UNIT_WEIGHT if spec.privacy is not None else keys.NUM_EXAMPLES,
    }
    strategy: Strategy
    if spec.strategy == "fedavg":
        strategy = FedAvg(**common)
    elif spec.strategy == "fedprox":
        strategy = FedProx(**common, proximal_mu=spec.proximal_mu)
    elif spec.strategy == "fedadam":
        strategy = FedAdam(**common, eta=spec.server_learning_rate)
    elif spec.strategy == "fedmedian":
        strategy = FedMedian(**common)
    else:
        strategy = Krum(**common, num_malicious_nodes=spec.byzantine_clients)
    if central and spec.privacy is not None and spec.privacy.noise_multiplier is not None:
        strategy = DifferentialPrivacyServerSideFixedClipping(
            strategy,
            noise_multiplier=spec.privacy.noise_multiplier,
            clipping_norm=spec.privacy.clip_norm,
            num_sampled_clients=spec.max_clients,
        )
    return strategy
