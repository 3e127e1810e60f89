"""Task metrics: top-1 accuracy, mean squared error, and cosine similarity to the reference outputs.

A metric scores one output of a candidate against the labels (or, for ``cosine``, against the
reference model's values of the same output on the same rows); ``compression.outputs`` decides which
outputs are scored, each on its own. Its *drop* is how much worse the candidate is than the
reference, in the metric's own units, so it compares directly with a device class's
``max_metric_drop``: for accuracy 0.01 is one point; for MSE it is an absolute increase.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from edgefleet.compression.errors import MetricError

__all__ = ["METRICS", "Metric", "cosine_rows", "get_metric"]


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row of ``a`` with the same row of ``b`` (rows flattened)."""
    a2 = a.reshape(len(a), -1).astype(np.float64)
    b2 = b.reshape(len(b), -1).astype(np.float64)
    norms = np.linalg.norm(a2, axis=1) * np.linalg.norm(b2, axis=1)
    dots = np.sum(a2 * b2, axis=1)
    # Two all-zero rows are identical; one zero row against a non-zero one shares no direction.
    both_zero = (np.linalg.norm(a2, axis=1) == 0) & (np.linalg.norm(b2, axis=1) == 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), 0.0)
    return np.where(both_zero, 1.0, cos)


def _accuracy(outputs: np.ndarray, labels: np.ndarray | None, reference: np.ndarray) -> float:
    assert labels is not None
    return float(np.mean(outputs.reshape(len(outputs), -1).argmax(axis=1) == labels.reshape(-1)))


def _mse(outputs: np.ndarray, labels: np.ndarray | None, reference: np.ndarray) -> float:
    assert labels is not None
    diff = outputs.astype(np.float64) - labels.reshape(outputs.shape).astype(np.float64)
    return float(np.mean(diff * diff))


def _cosine(outputs: np.ndarray, labels: np.ndarray | None, reference: np.ndarray) -> float:
    return float(np.mean(cosine_rows(outputs, reference)))


@dataclass(frozen=True)
class Metric:
    name: str
    higher_is_better: bool
    needs_labels: bool
    description: str
    score: Callable[[np.ndarray, np.ndarray | None, np.ndarray], float]

    def drop(self, reference: float, candidate: float) -> float:
        """How much worse ``candidate`` is than ``reference`` (negative when it is better)."""
        return reference - candidate if self.higher_is_better else candidate - reference

    def check_labels(self, labels: np.ndarray | None, rows: int) -> None:
        """Raise MetricError when the labels cannot support this metric (which outputs they fit:
        ``compression.outputs``)."""
        if not self.needs_labels:
            return
        if labels is None:
            raise MetricError(f"metric {self.name} needs labels: add 'y' to the data (see compression.data)")
        if len(labels) != rows:
            raise MetricError(f"metric {self.name}: {len(labels)} labels for {rows} validation rows")
        if self.name == "accuracy" and labels.dtype.kind not in "iub":
            raise MetricError(f"metric accuracy needs integer class labels, got dtype {labels.dtype}")


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("accuracy", True, True, "top-1 accuracy of each output against integer labels", _accuracy),
        Metric("mse", False, True, "mean squared error of each output against target values", _mse),
        Metric("cosine", True, False, "mean cosine similarity of each output to the reference's", _cosine),
    )
}


def get_metric(name: str) -> Metric:
    try:
        return METRICS[name]
    except KeyError:
        raise MetricError(f"unknown metric {name!r}; known: {', '.join(METRICS)}") from None
