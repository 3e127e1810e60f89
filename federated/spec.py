"""A campaign's typed specification: what to train, on whom, how, and under which privacy budget."""

from __future__ import annotations

from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["STRATEGIES", "CampaignSpec", "PrivacySpec", "StrategyName"]

StrategyName = Literal["fedavg", "fedprox", "fedadam", "fedmedian", "krum"]
STRATEGIES: tuple[str, ...] = ("fedavg", "fedprox", "fedadam", "fedmedian", "krum")


# Bounds of a spec: an infinite wait never ends a round, an epsilon past these is no guarantee worth stating,
# and a delta this large allows leaking a sample of any small dataset outright.
MAX_WAIT_S = 7 * 86400.0
MAX_EPSILON = 100.0
MAX_DELTA = 1e-3

class PrivacySpec(BaseModel):
    """Differential privacy for the campaign.

    ``local``: every client runs DP-SGD (Opacus) and accounts its own cumulative epsilon at ``delta``
    over all its rounds; a client whose next round would pass ``max_epsilon`` declines to train.
    ``central``: clients clip their update to ``clip_norm`` and the server adds Gaussian noise to the
    aggregate (Flower's DP wrapper strategies); the server accounts client-level epsilon.
    ``distributed``: sample-level DP for what the server sees, with the campaign's secure aggregation:
    every client runs one full-batch DP-SGD step per round and adds 1/sqrt(min_clients) of the noise,
    so the sum of the at least min_clients updates the server can unmask carries the whole noise
    multiplier. Clients account and report that epsilon (the campaign's guarantee, against an
    honest-but-curious server) and their own update's far larger ``local-epsilon``.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    mode: Literal["local", "central", "distributed"] = Field(default="local", description="Where noise is added.")
    noise_multiplier: float | None = Field(
        default=None, gt=0, le=100, description="Noise std / clip norm; for local DP, or give target_epsilon instead."
    )
    target_epsilon: float | None = Field(
        default=None, gt=0, le=MAX_EPSILON,
        description="Local DP: choose the noise so that all rounds together spend this epsilon.",
    )
    clip_norm: float = Field(
        default=1.0, gt=0, le=1e6, description="Per-sample (local) or per-update (central) L2 clip."
    )
    delta: float = Field(
        default=1e-5, gt=0, le=MAX_DELTA, description="The delta every epsilon is stated at; below 1/n of the "
        "smallest dataset, or the guarantee allows leaking a whole sample with that probability."
    )  # fmt: skip
    max_epsilon: float = Field(
        default=10.0, gt=0, le=MAX_EPSILON, description="No client's cumulative epsilon may pass this."
    )
    accountant: Literal["rdp", "prv"] = Field(default="rdp", description="Opacus accountant for local DP.")

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.mode == "central" and self.noise_multiplier is None:
            raise ValueError("central DP needs noise_multiplier")
        if self.mode != "central" and (self.noise_multiplier is None) == (self.target_epsilon is None):
            raise ValueError(f"{self.mode} DP needs exactly one of noise_multiplier and target_epsilon")
        if self.target_epsilon is not None and self.target_epsilon > self.max_epsilon:
            raise ValueError(f"target_epsilon {self.target_epsilon} is above max_epsilon {self.max_epsilon}")
        return self


class CampaignSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    model: str = Field(min_length=1, max_length=128, description="Registry model name to improve.")
    base_version: str = Field(default="production", max_length=64, description="Version, or a stage name.")
    architecture: str = Field(
        default="mlp",
        max_length=256,
        description="Trainable architecture: a built-in key (mlp), an installed edgefleet.architectures entry "
        "point, or a pkg.module:factory path the coordinator's and the devices' admins allow.",
    )
    architecture_args: dict[str, Any] = Field(default_factory=dict, description="Keywords for the factory.")
    input_name: str | None = Field(default=None, description="Model input the samples feed; default: the first.")
    label_name: str = Field(default="label", description="Name of the label array in the devices' samples.")
    loss: Literal["cross_entropy", "mse"] = Field(default="cross_entropy", description="Training loss.")
    strategy: StrategyName = Field(default="fedavg", description="Flower strategy that aggregates the updates.")
    proximal_mu: float = Field(default=0.01, ge=0, description="FedProx: weight of the proximal term.")
    server_learning_rate: float = Field(default=0.1, gt=0, description="FedAdam: the server optimizer's step.")
    byzantine_clients: int = Field(default=0, ge=0, description="Krum: how many malicious updates to tolerate.")
    rounds: int = Field(default=5, ge=1, le=10_000, description="Training rounds.")
    min_clients: int = Field(default=2, ge=1, description="A round needs at least this many answers.")
    max_clients: int = Field(default=10, ge=1, description="Clients sampled per round, at most.")
    min_samples: int = Field(default=10, ge=1, description="Devices with fewer samples are not selected.")
    round_timeout_s: float = Field(
        default=300.0, gt=0, le=MAX_WAIT_S,
        description="How long a round waits for answers (with secure aggregation: each stage).",
    )
    node_wait_s: float = Field(
        default=120.0, ge=0, le=MAX_WAIT_S, description="How long a round waits for min_clients to connect."
    )
    max_failed_rounds: int = Field(default=3, ge=1, description="Consecutive failed rounds that end the campaign.")
    local_epochs: int = Field(default=1, ge=1, le=1000, description="Epochs over local samples per round.")
    batch_size: int = Field(default=32, ge=1, description="Expected local batch size (Poisson for DP).")
    learning_rate: float = Field(default=0.05, gt=0, description="Local SGD step.")
    momentum: float = Field(default=0.0, ge=0, lt=1, description="Local SGD momentum.")
    server_ema: float = Field(
        default=0.0,
        ge=0,
        lt=1,
        description="Keep an exponential moving average of the global models with this decay; evaluations and "
        "the result use the average, clients keep training from the latest aggregate. It only post-processes "
        "what the rounds released, so it spends no privacy; it smooths the noise of DP rounds. 0: off.",
    )
    privacy: PrivacySpec | None = Field(default=None, description="Differential privacy; none means no guarantee.")
    secure_aggregation: bool = Field(
        default=False,
        description="Sum the updates with Flower's SecAgg+ (masked, quantized): the server learns each round's "
        "mean of the updates (sample-weighted without DP, each count then sent in the clear; unweighted under DP), "
        "never one update, unmasked only if at least min_clients sent theirs.",
    )
    device_evaluation: bool = Field(
        default=False,
        description="After every round the devices evaluate the global model on their own samples and report "
        "loss and accuracy (their mean weighted by samples is recorded per round). The figures are computed on "
        "private data and no DP guarantee covers them, so this is refused together with privacy.",
    )
    validation_data: str | None = Field(
        default=None,
        description="An .npz on the coordinator with arrays named input_name (or 'input') and label_name: "
        "held-out data the global model is evaluated on after every round.",
    )

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.max_clients < self.min_clients:
            raise ValueError(f"max_clients {self.max_clients} is below min_clients {self.min_clients}")
        if self.strategy == "krum" and self.min_clients < 2 * self.byzantine_clients + 3:
            raise ValueError(f"krum with {self.byzantine_clients} byzantine clients needs min_clients >= "
                             f"{2 * self.byzantine_clients + 3}")  # fmt: skip
        if self.device_evaluation and self.privacy is not None:
            raise ValueError(
                "device_evaluation reports statistics of the devices' private samples that the DP guarantee does "
                "not cover: use validation_data (evaluated on the coordinator) with privacy"
            )
        if self.privacy and self.privacy.mode == "central" and self.strategy not in ("fedavg", "fedprox"):
            raise ValueError("central DP wraps a mean-based strategy: use fedavg or fedprox")
        if self.secure_aggregation:
            if self.strategy not in ("fedavg", "fedprox"):
                raise ValueError("secure aggregation reveals only the mean of the updates: use fedavg or fedprox")
            if self.privacy and self.privacy.mode == "central":
                raise ValueError("central DP clips each update on the server, which secure aggregation hides")
            if self.min_clients < 2 or self.max_clients > 1000:
                raise ValueError("secure aggregation needs min_clients >= 2 and max_clients <= 1000")
        if self.privacy and self.privacy.mode == "distributed":
            if not self.secure_aggregation:
                raise ValueError("distributed DP splits the noise over the clients: it needs secure_aggregation")
            if self.local_epochs != 1:
                raise ValueError("distributed DP takes one full-batch step per round: set local_epochs to 1")
        return self
