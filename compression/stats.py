"""Reference statistics of the inputs, for drift detection on the device.

Each input is flattened after the batch axis into features. Only the first ``MAX_FEATURES`` (256)
features are described: enough for tabular data and small images, and it keeps the manifest well
under its 4 MiB cap (256 features x 11 deciles x a few inputs is tens of kilobytes). A consumer
compares the first ``len(mean)`` features of live inputs; the bundle's metadata says when an input
had more features than were described.
"""

from __future__ import annotations

import numpy as np

from protocol.model_card import InputStats

__all__ = ["MAX_FEATURES", "QUANTILES", "input_stats"]

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
        edges = np.quantile(flat, QUANTILES, axis=0).T
        stats[name] = InputStats(
            samples=len(flat),
            quantiles=QUANTILES,
            edges=[[round(float(v), 6) for v in row] for row in edges],
            mean=[round(float(v), 6) for v in flat.mean(axis=0)],
            std=[round(float(v), 6) for v in flat.std(axis=0)],
        )
    return stats, notes
