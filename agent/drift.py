"""Input drift on the device: each input's recent rows against the reference distribution that the
bundle's manifest carries (per-feature quantile edges), scored with the population stability index.

Cheap enough for every request: one vectorised comparison against the edges and a write into a
ring buffer of bin indices; counting and scoring happen only when telemetry asks for a score.
"""

from __future__ import annotations

import threading

import numpy as np

from protocol.model_card import InputStats

__all__ = ["DriftMonitor", "InputDrift", "psi"]

EPSILON = 1e-4


def psi(expected: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """Population stability index per row of bin proportions (last axis: bins)."""
    e = np.clip(expected, EPSILON, None)
    a = np.clip(actual, EPSILON, None)
    return np.sum((a - e) * np.log(a / e), axis=-1)


class InputDrift:
    """Sliding window of one input's bin indices, per feature, against its reference quantiles."""

    def __init__(self, stats: InputStats, window: int) -> None:
        self.edges = np.asarray(stats.edges, dtype=np.float64).T  # (quantiles, features)
        self.features = self.edges.shape[1]
        quantiles = np.asarray(stats.quantiles, dtype=np.float64)
        # Bins: below the first edge, between each pair of edges, above the last one.
        inner = np.diff(quantiles)
        self.expected = np.concatenate([[quantiles[0]], inner, [1.0 - quantiles[-1]]])
        self.bins = len(self.expected)
        self.window = window
        self._ring = np.zeros((window, self.features), dtype=np.int16)
        self._filled = 0
        self._next = 0

    def observe(self, batch: np.ndarray) -> None:
        rows = batch.reshape(batch.shape[0], -1)
        if rows.shape[1] != self.features:
            return  # a shape the statistics do not describe (e.g. a different sequence length)
        bins = (rows[:, None, :] > self.edges[None, :, :]).sum(axis=1, dtype=np.int16)[-self.window :]
        # Only bin indices go into the ring here; counting waits until a score is asked for.
        n = len(bins)
        first = min(n, self.window - self._next)
        self._ring[self._next : self._next + first] = bins[:first]
        self._ring[: n - first] = bins[first:]
        self._next = (self._next + n) % self.window
        self._filled = min(self.window, self._filled + n)

    @property
    def rows(self) -> int:
        return self._filled

    def counts(self) -> np.ndarray:
        """Rows per (feature, bin) in the window."""
        window = self._ring[: self._filled].astype(np.int64) + np.arange(self.features) * self.bins
        return np.bincount(window.ravel(), minlength=self.features * self.bins).reshape(self.features, self.bins)

    def scores(self) -> np.ndarray | None:
        """PSI per feature over the window, or None before any row was seen."""
        if self._filled == 0:
            return None
        return psi(self.expected[None, :], self.counts() / self._filled)


class DriftMonitor:
    """All inputs of one model that have reference statistics; thread-safe."""

    def __init__(self, reference: dict[str, InputStats], *, window: int = 500, min_rows: int = 50) -> None:
        self.inputs = {name: InputDrift(stats, window) for name, stats in reference.items()}
        self.min_rows = min_rows
        self._lock = threading.Lock()

    def observe(self, inputs: dict[str, np.ndarray]) -> None:
        with self._lock:
            for name, drift in self.inputs.items():
                if name in inputs:
                    drift.observe(inputs[name])

    def score(self) -> tuple[float | None, dict[str, float]]:
        """The model's drift score (mean PSI over all features) and the worst features by name."""
        with self._lock:
            per_input = {name: (d.scores(), d.rows) for name, d in self.inputs.items()}
        worst: dict[str, float] = {}
        values = []
        for name, (scores, rows) in per_input.items():
            if scores is None or rows < self.min_rows:
                continue
            values.append(scores)
            for index in np.argsort(scores)[-3:][::-1]:
                worst[f"{name}[{int(index)}]"] = round(float(scores[index]), 4)
        if not values:
            return None, {}
        return float(np.mean(np.concatenate(values))), dict(sorted(worst.items(), key=lambda kv: -kv[1])[:3])
