"""Reference statistics of the inputs and of a classifier's output confidence, for drift detection on
the device.

Each input is flattened after the batch axis into features. Only the first ``MAX_FEATURES`` (256)
features are described: enough for tabular data and small images, and it keeps the manifest well
under its 4 MiB cap (256 features x 11 deciles x a few inputs is tens of kilobytes). A consumer
compares the first ``len(mean)`` features of live inputs; the bundle's metadata says when an input
had more features than were described.

The confidence of a row is its top class probability (``agent.drift.max_confidence``, which the device
uses too); its reference is binned at its deciles, and each bin's share is counted on the reference
rows themselves, so the many rows a confident classifier puts at the very same value stay in one bin.
"""

from __future__ import annotations

import numpy as np

from edgefleet.agent.telemetry.drift import max_confidence
from edgefleet.protocol.model_card import ConfidenceKind, ConfidenceStats, InputStats

__all__ = ["MAX_FEATURES", "QUANTILES", "confidence_kind", "confidence_stats", "input_stats"]

MAX_FEATURES = 256
QUANTILES = [round(q, 2) for q in np.linspace(0.0, 1.0, 11)]


def input_stats(
    inputs: dict[str, np.ndarray], max_features: int = MAX_FEATURES
) -> tuple[dict[str, InputStats], dict[str, str]]:
    """Per input: deciles, mean and std of each of its first ``max_features`` features; and notes on the caps."""
    stats, notes = {}, {}
    for name, array in inputs.items():
        flat = array.reshape(len(array), -1).astype(np.float64)
        features = flat.shape[1]
        if features > max_features:
            notes[f"reference_stats.{name}"] = f"first {max_features} of {features} features"
            flat = flat[:, :max_features]
        edges = np.round(np.quantile(flat, QUANTILES, axis=0).T, 6)  # (features, quantiles), as stored
        # The shares are counted with the device's binning rule on the reference rows themselves, so
        # tied values (a pixel that is always 0) land where the device will put them.
        bins = (flat[:, None, :] > edges.T[None, :, :]).sum(axis=1)  # (rows, features)
        counts = np.stack([np.bincount(bins[:, f], minlength=len(QUANTILES) + 1) for f in range(bins.shape[1])])
        stats[name] = InputStats(
            samples=len(flat),
            quantiles=QUANTILES,
            edges=[[float(v) for v in row] for row in edges],
            expected=[[round(float(v), 6) for v in row] for row in counts / len(flat)],
            mean=[round(float(v), 6) for v in flat.mean(axis=0)],
            std=[round(float(v), 6) for v in flat.std(axis=0)],
        )
    return stats, notes


def confidence_kind(output: np.ndarray) -> ConfidenceKind | None:
    """How to read a classifier's output: probability if its rows already are distributions, else softmax.

    None for an output that is not classification-like: not a 2-D float [batch, classes >= 2] array
    of finite values. Sigmoid (multi-label) outputs look like logits and must be named by the caller.
    """
    if output.ndim != 2 or output.shape[0] < 1 or output.shape[1] < 2 or output.dtype.kind != "f":
        return None
    rows = output.astype(np.float64)
    if not np.isfinite(rows).all():
        return None
    if rows.min() >= 0.0 and rows.max() <= 1.0 and np.allclose(rows.sum(axis=1), 1.0, atol=1e-3):
        return "probability"
    return "softmax"


def confidence_stats(name: str, output: np.ndarray, kind: ConfidenceKind | None = None) -> ConfidenceStats | None:
    """The reference confidence of output ``name`` over the validation rows, or None if it is no classifier's."""
    kind = kind or confidence_kind(output)
    if kind is None:
        return None
    confidence = max_confidence(output, kind)
    edges = np.unique(np.round(np.quantile(confidence, QUANTILES[1:-1]), 6))
    # Counted with the rule the device bins by (searchsorted, side="left"), on the rounded edges.
    counts = np.bincount(np.searchsorted(edges, confidence), minlength=len(edges) + 1)
    return ConfidenceStats(
        output=name,
        kind=kind,
        classes=output.shape[1],
        samples=len(confidence),
        edges=[float(e) for e in edges],
        expected=[round(float(c), 6) for c in counts / len(confidence)],
    )
