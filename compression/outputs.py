"""Which outputs of a model a run scores, which merely copy an input, and each output's own score.

Every output is scored by default, each on its own; the worst one (the largest drop) is the
candidate's metric and gates the selection, so a broken embedding cannot hide behind an exact
copy of the input ids. An output whose reference values equal an input's (an int64 passthrough of
``input_ids``, say) is noted and not scored: any candidate reproduces it. For a metric with labels
(accuracy, mse) an output the labels fit is scored by that metric; any other scored output by its
cosine similarity to the reference's, whose drop is then in cosine units. An integer or boolean
output (class ids, a mask) is scored by *agreement*, the share of rows equal to the reference's:
the cosine of class 3 against class 5 would be 1.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from edgefleet.compression.errors import MetricError
from edgefleet.compression.metrics import Metric, cosine_rows, get_metric

__all__ = ["OutputPlan", "OutputScore", "copied_input", "fits_labels", "plan_outputs", "score_outputs", "worst"]


def _agreement(outputs: np.ndarray, labels: np.ndarray | None, reference: np.ndarray) -> float:
    rows = len(outputs)
    return float(np.mean(np.all(outputs.reshape(rows, -1) == reference.reshape(rows, -1), axis=1)))


AGREEMENT = Metric("agreement", True, False, "share of rows equal to the reference's (integer outputs)", _agreement)


@dataclass(frozen=True)
class OutputScore:
    """One output of one candidate, against the reference's values of the same output."""

    metric: str  # the metric it is scored by
    score: float
    drop: float
    cosine_to_reference: float
    top1_agreement: float | None = None


@dataclass
class OutputPlan:
    """The outputs a run scores, decided on the reference's values."""

    outputs: list[str]  # every output of the reference, in model order
    scored: list[str]
    metric_of: dict[str, str]  # scored output -> the metric it is scored by
    passthrough: dict[str, str] = field(default_factory=dict)  # output -> the input it copies
    reference: dict[str, np.ndarray] = field(default_factory=dict)  # the reference's scored outputs
    reference_scores: dict[str, OutputScore] = field(default_factory=dict)

    @property
    def primary(self) -> str:
        """The first scored output: where the bundle's reference confidence comes from."""
        return self.scored[0]

    def notes(self) -> list[str]:
        return [f"output {o!r} copies input {i!r}: noted, not scored" for o, i in self.passthrough.items()]


def copied_input(output: np.ndarray, inputs: Mapping[str, np.ndarray]) -> str | None:
    """The name of the input ``output`` equals value for value (any dtype), or None."""
    for name, array in inputs.items():
        if array.shape == output.shape and np.array_equal(np.asarray(array), np.asarray(output)):
            return name
    return None


def fits_labels(metric: Metric, output: np.ndarray | tuple[int | None, ...], labels: np.ndarray) -> bool:
    """Whether ``metric`` can score ``output`` (values, or a shape with None for unknown) against ``labels``."""
    shape = output.shape if isinstance(output, np.ndarray) else output
    if isinstance(output, np.ndarray) and output.dtype.kind not in "fc":
        return False
    if len(shape) < 1 or shape[0] not in (None, len(labels)):
        return False
    if metric.name == "accuracy":  # scores per class to take the argmax of
        return len(shape) >= 2 and any(d is None or d > 1 for d in shape[1:])
    if metric.name == "mse":
        known = [d for d in shape[1:] if d is not None]
        if len(known) != len(shape) - 1:
            return True
        return int(np.prod(known, dtype=np.int64)) == int(np.prod(labels.shape[1:], dtype=np.int64))
    return True


def plan_outputs(
    reference: Mapping[str, np.ndarray],
    inputs: Mapping[str, np.ndarray],
    metric: Metric,
    labels: np.ndarray | None,
    requested: list[str] | None = None,
) -> OutputPlan:
    """Decide what is scored from the reference's values of every output (``reference``, in model order)."""
    names = list(reference)
    unknown = [n for n in requested or [] if n not in reference]
    if unknown:
        raise MetricError(f"no output {unknown[0]!r}; the model's outputs are {', '.join(names)}")
    chosen = [n for n in names if n in requested] if requested else names
    passthrough = {n: i for n in chosen if (i := copied_input(reference[n], inputs)) is not None}
    scored = [n for n in chosen if n not in passthrough]
    if not scored:
        copies = "; ".join(f"output {o!r} copies input {i!r}" for o, i in passthrough.items())
        raise MetricError(f"{copies}; nothing left to score: name a computed output with --output")
    metric_of = {n: metric.name for n in scored}
    if metric.needs_labels:
        assert labels is not None
        for n in scored:
            if not fits_labels(metric, reference[n], labels):
                metric_of[n] = "cosine"
        if all(m == "cosine" for m in metric_of.values()):
            shapes = ", ".join(f"{n} {list(reference[n].shape)}" for n in scored)
            raise MetricError(
                f"metric {metric.name}: the labels (shape {list(labels.shape)}) fit none of the scored outputs "
                f"({shapes}); choose outputs with --output, or use cosine"
            )
    for n in scored:
        if metric_of[n] == "cosine" and reference[n].dtype.kind in "iub":
            metric_of[n] = AGREEMENT.name
    return OutputPlan(names, scored, metric_of, passthrough, {n: reference[n] for n in scored})


def score_outputs(
    plan: OutputPlan, outputs: Mapping[str, np.ndarray], labels: np.ndarray | None, reference_scores: dict[str, float]
) -> dict[str, OutputScore]:
    """Each scored output of a candidate; ``reference_scores`` is empty for the reference itself."""
    scores = {}
    for name in plan.scored:
        metric = AGREEMENT if plan.metric_of[name] == AGREEMENT.name else get_metric(plan.metric_of[name])
        values, ref = outputs[name], plan.reference[name]
        score = metric.score(values, labels, ref)
        agreement = None
        if metric.name == "accuracy":
            agreement = float(np.mean(values.reshape(len(values), -1).argmax(1) == ref.reshape(len(ref), -1).argmax(1)))
        scores[name] = OutputScore(
            metric=metric.name,
            score=score,
            drop=metric.drop(reference_scores.get(name, score), score),
            cosine_to_reference=float(np.mean(cosine_rows(values, ref))),
            top1_agreement=agreement,
        )
    return scores


def worst(scores: Mapping[str, OutputScore]) -> tuple[str, OutputScore]:
    """The output that gates: the largest drop (the first in model order on a tie)."""
    name = max(scores, key=lambda n: scores[n].drop)
    return name, scores[name]
