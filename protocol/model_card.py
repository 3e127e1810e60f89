"""What a bundle's manifest says about its model beyond the tensors: preprocessing, labels,
reference input and output-confidence statistics (for drift detection on the device), the compression
recipe, measured metrics, lineage and, for a model trained by a federated campaign, its privacy guarantee."""

from __future__ import annotations

from itertools import pairwise
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "Asset",
    "AssetInfo",
    "AssetRole",
    "ConfidenceKind",
    "ConfidenceStats",
    "Disclosure",
    "InputStats",
    "Lineage",
    "ModelCard",
    "OutputRole",
    "PreprocessingStep",
    "PrivacyReport",
    "Recipe",
    "SequenceSpec",
    "StateTensor",
]

Param = str | int | float | bool | list[float] | list[int] | list[str]
ConfidenceKind = Literal["softmax", "probability", "sigmoid"]
MAX_CONFIDENCE_BINS = 101


class PreprocessingStep(BaseModel):
    """One step an app applies before feeding an input, e.g. {op: "scale", params: {factor: 1/16}}."""

    model_config = ConfigDict(extra="forbid")

    op: str = Field(min_length=1, max_length=64, description="scale, normalize, resize, tokenize, ...")
    input: str | None = Field(default=None, description="The model input it prepares (None: all).")
    params: dict[str, Param] = Field(default_factory=dict)


class InputStats(BaseModel):
    """Reference distribution of one input, per feature (the input flattened after the batch axis)."""

    model_config = ConfigDict(extra="forbid")

    samples: int = Field(ge=1, description="How many reference rows these statistics describe.")
    quantiles: list[float] = Field(min_length=2, description="The probabilities of `edges`, ascending.")
    edges: list[list[float]] = Field(description="Per feature, the values at `quantiles`.")
    mean: list[float]
    std: list[float]
    expected: list[list[float]] | None = Field(
        default=None,
        description="Per feature, the share of reference rows in each bin (one more bin than edges), counted "
        "with the device's rule: a value is in bin i when i edges lie strictly below it. Without it the "
        "shares come from `quantiles`, which misstates features with ties (e.g. pixels that are always 0).",
    )

    @model_validator(mode="after")
    def _shapes(self) -> InputStats:
        features = len(self.mean)
        if len(self.std) != features or len(self.edges) != features:
            raise ValueError("mean, std and edges must describe the same number of features")
        if any(len(e) != len(self.quantiles) for e in self.edges):
            raise ValueError("every feature needs one edge per quantile")
        if self.expected is not None and (
            len(self.expected) != features or any(len(row) != len(self.quantiles) + 1 for row in self.expected)
        ):
            raise ValueError("expected needs, per feature, one share per bin (one more than the quantiles)")
        return self


class ConfidenceStats(BaseModel):
    """Reference distribution of a classifier's confidence: the largest class probability of each row.

    ``edges`` split [0, 1] into bins (a row falls in bin ``i`` when ``i`` edges lie below its confidence);
    ``expected`` is the share of reference rows in each bin, measured with that same rule, so ties (many
    rows at the same confidence) are counted where the device will count them.
    """

    model_config = ConfigDict(extra="forbid")

    output: str = Field(min_length=1, description="The model output scored: 2-D, [batch, classes].")
    kind: ConfidenceKind = Field(
        description="How to read the output's rows: softmax (logits: apply softmax), probability (already "
        "probabilities), sigmoid (independent logits: apply the sigmoid)."
    )
    classes: int = Field(ge=2, description="Width of the output's class axis; rows of another width are ignored.")
    samples: int = Field(ge=1, description="How many reference rows these statistics describe.")
    edges: list[float] = Field(
        min_length=1,
        max_length=MAX_CONFIDENCE_BINS - 1,
        description="Bin boundaries in [0, 1], strictly ascending: the reference confidence's deciles, ties merged.",
    )
    expected: list[float] = Field(description="Share of the reference rows per bin; one more than `edges`.")

    @model_validator(mode="after")
    def _bins(self) -> ConfidenceStats:
        if any(not 0.0 <= e <= 1.0 for e in self.edges) or any(a >= b for a, b in pairwise(self.edges)):
            raise ValueError("edges must lie in [0, 1] and ascend strictly")
        if len(self.expected) != len(self.edges) + 1:
            raise ValueError(f"expected needs {len(self.edges) + 1} shares, one per bin; got {len(self.expected)}")
        if any(not 0.0 <= p <= 1.0 for p in self.expected) or abs(sum(self.expected) - 1.0) > 1e-3:
            raise ValueError("expected shares must lie in [0, 1] and add up to 1")
        return self


class Recipe(BaseModel):
    """How this model was made from its parent: the technique and its settings."""

    model_config = ConfigDict(extra="forbid")

    technique: str = Field(description="e.g. fp32, int8-dynamic, int8-static, fp16, pruned, distilled, tflite")
    params: dict[str, Param] = Field(default_factory=dict)
    tool: str | None = Field(default=None, description="Library and version that applied it.")


class Lineage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    parent_version: str | None = Field(default=None, description="Model version this bundle derives from.")
    parent_digest: str | None = Field(default=None, description="Digest of the reference model file.")
    campaign: str | None = Field(default=None, description="Federated campaign that produced it.")


class Disclosure(BaseModel):
    """One thing that reaches the server beside the protected update, and whether the guarantee covers it."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, description="The wire key (e.g. epsilon) or what it is (e.g. participation).")
    covered: bool = Field(description="Whether the report's epsilon/delta guarantee covers it.")
    why: str = Field(min_length=1, description="What it reveals, or why the guarantee covers it.")


class PrivacyReport(BaseModel):
    """The differential privacy guarantee of a model trained by a federated campaign."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["none", "local", "central", "distributed"] = Field(
        description="local: DP-SGD on devices; central: server noise; distributed: DP-SGD on devices with the "
        "noise split among the clients whose updates secure aggregation sums."
    )
    epsilon: float | None = Field(default=None, ge=0, description="Cumulative epsilon; local: the largest client's.")
    delta: float | None = Field(default=None, gt=0, lt=1)
    accountant: str | None = Field(default=None, description="e.g. opacus-rdp, opacus-prv.")
    noise_multiplier: float | None = Field(default=None, ge=0)
    clip_norm: float | None = Field(default=None, gt=0)
    rounds: int = Field(ge=0, description="Rounds whose updates went into the model.")
    clients: int = Field(ge=0, description="Distinct devices that contributed.")
    unit: Literal["sample", "client"] | None = Field(
        default=None, description="What a neighbouring dataset differs by: one sample (local) or one client (central)."
    )
    secure_aggregation: bool = Field(default=False, description="The server saw only sums of updates (SecAgg+).")
    local_epsilon: float | None = Field(
        default=None,
        ge=0,
        description="Distributed: the largest epsilon of one device's own updates, with only its share of the noise "
        "(what holds if secure aggregation is broken).",
    )
    disclosed: list[Disclosure] = Field(
        default_factory=list,
        description="What the server learns beside the protected update (or the mean secure aggregation "
        "reveals), each with whether the guarantee covers it. Empty in reports written before it was listed.",
    )


AssetRole = Literal["tokenizer", "vocabulary", "labels", "config", "preprocessing", "other"]
OutputRole = Literal["logits", "probabilities", "embedding", "boxes", "scores", "class_ids", "mask", "state", "other"]


class Asset(BaseModel):
    """A file of the bundle an app needs beside the model (a tokenizer, a label list, a config), hashed and
    verified like the model file and served by the agent's GetAsset."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200, description="The file's name among the bundle's files.")
    role: AssetRole = Field(description="What an app uses it for.")
    media_type: str = Field(default="application/octet-stream", max_length=100, pattern=r"^[\w.+-]+/[\w.+-]+$")


class AssetInfo(Asset):
    size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class ModelCard(BaseModel):
    """What an app on the device needs to feed a model it has never seen: served by ModelInfo (as JSON)."""

    model_config = ConfigDict(extra="forbid")

    description: str | None = None
    labels: list[str] | None = Field(default=None, description="Class names, in output index order.")
    preprocessing: list[PreprocessingStep] = Field(default_factory=list)
    output_roles: dict[str, OutputRole] = Field(default_factory=dict, description="Per output name: what it holds.")
    assets: list[AssetInfo] = Field(default_factory=list)
    sequence: SequenceSpec | None = Field(default=None, description="The states the agent keeps per sequence id.")
    metadata: dict[str, str] = Field(default_factory=dict)


class StateTensor(BaseModel):
    """One recurrent state the agent keeps between a sequence's requests: ``output`` of one step feeds
    ``input`` of the next; the first step gets zeros of the input's shape (dynamic dimensions 1)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input: str = Field(min_length=1, max_length=128)
    output: str = Field(min_length=1, max_length=128)


class SequenceSpec(BaseModel):
    """Sequence serving (like Triton's sequence batcher): requests that name a sequence id get their state
    inputs from the agent, which keeps the state outputs for the sequence's next request."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    states: list[StateTensor] = Field(min_length=1, max_length=16)
    max_sequences: int = Field(default=64, ge=1, le=4096, description="Live sequences at once, at most.")
    idle_timeout_s: float = Field(
        default=60.0, ge=0.1, le=86_400.0, description="A sequence unused this long is dropped with its state."
    )
