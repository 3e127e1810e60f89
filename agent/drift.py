"""Drift on the device, scored with the population stability index against the reference the bundle's
manifest carries: each input's recent rows (per-feature quantile edges), and the confidence of the
model's recent outputs (the top class probability of each row, binned at the reference's deciles).

Cheap enough for every request: one vectorised comparison against the edges and a write into a
ring buffer of bin indices; counting and scoring happen only when telemetry asks for a score.
"""

from __future__ import annotations

import threading

import numpy as np

from protocol.model_card import ConfidenceKind, ConfidenceStats, InputStats

__all__ = ["ConfidenceMonitor", "DriftMonitor", "InputDrift", "max_confidence", "psi"]

EPSILON = 1e-4


def psi(expected: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """Population stability index per row of bin proportions (last axis: bins)."""
    e = np.clip(expected, EPSILON, None)
    a = np.clip(actual, EPSILON, None)
    return np.sum((a - e) * np.log(a / e), axis=-1)


def max_confidence(output: np.ndarray, kind: ConfidenceKind) -> np.ndarray:
    """The top class probability of each row of a [batch, classes] output, in float64.

    The build computes the reference with this same function, so both sides bin identical numbers.
    """
    rows = output.astype(np.float64, copy=False)
    top = rows.max(axis=1)
    if kind == "probability":
        return top
    if kind == "sigmoid":
        # The sigmoid is monotonic, so its maximum is that of the top logit; tanh cannot overflow.
        return 0.5 * (1.0 + np.tanh(0.5 * top))
    # softmax's largest share is exp(0) over the sum of exp(logit - top logit)
    return 1.0 / np.exp(rows - top[:, None]).sum(axis=1)


class _BinRing:
    """The bin index of each of the last ``window`` rows, per feature; counted only when asked."""

    def __init__(self, window: int, features: int, bins: int) -> None:
        self.window, self.features, self.bins = window, features, bins
        self._ring = np.zeros((window, features), dtype=np.int16)
        self._filled = 0
        self._next = 0

    def push(self, bins: np.ndarray) -> None:
        bins = bins.reshape(len(bins), self.features)[-self.window :]
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


class InputDrift:
    """Sliding window of one input's bin indices, per feature, against its reference quantiles."""

    def __init__(self, stats: InputStats, window: int) -> None:
        self.edges = np.asarray(stats.edges, dtype=np.float64).T  # (quantiles, features)
        self.features = self.edges.shape[1]
        quantiles = np.asarray(stats.quantiles, dtype=np.float64)
        # Bins: below the first edge, between each pair of edges, above the last one.
        self.bins = len(quantiles) + 1
        if stats.expected is not None:  # counted at build time with the rule observe() uses
            self.expected = np.asarray(stats.expected, dtype=np.float64)
        else:  # older bundles: shares from the quantiles (wrong where a feature has ties)
            shares = np.concatenate([[quantiles[0]], np.diff(quantiles), [1.0 - quantiles[-1]]])
            self.expected = np.broadcast_to(shares, (self.features, self.bins))
        self.window = window
        self._ring = _BinRing(window, self.features, self.bins)

    def observe(self, batch: np.ndarray) -> None:
        rows = batch.reshape(batch.shape[0], -1)
        if rows.shape[1] != self.features:
            return  # a shape the statistics do not describe (e.g. a different sequence length)
        # Only bin indices go into the ring here; counting waits until a score is asked for.
        self._ring.push((rows[:, None, :] > self.edges[None, :, :]).sum(axis=1, dtype=np.int16))

    @property
    def rows(self) -> int:
        return self._ring.rows

    def counts(self) -> np.ndarray:
        """Rows per (feature, bin) in the window."""
        return self._ring.counts()

    def scores(self) -> np.ndarray | None:
        """PSI per feature over the window, or None before any row was seen."""
        if self.rows == 0:
            return None
        return psi(self.expected, self.counts() / self.rows)


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


class ConfidenceMonitor:
    """Sliding window of the per-row top confidence of one output, against its reference bins; thread-safe."""

    def __init__(self, reference: ConfidenceStats, *, window: int = 500, min_rows: int = 50,
                 pending_rows: int = 64) -> None:  # fmt: skip
        self.output = reference.output
        self.kind: ConfidenceKind = reference.kind
        self.classes = reference.classes
        self.edges = np.asarray(reference.edges, dtype=np.float64)
        self.expected = np.asarray(reference.expected, dtype=np.float64)
        self.min_rows = min_rows
        self._ring = _BinRing(window, 1, len(self.expected))
        self._lock = threading.Lock()
        # Outputs wait here and are binned together: a handful of numpy calls per prediction cost
        # more than a small model's inference (~8 us against ~120 us for the digits CNN).
        self._pending: list[np.ndarray] = []
        self._pending_rows = 0
        self._flush_at = max(1, pending_rows)

    def observe(self, outputs: dict[str, np.ndarray]) -> None:
        """Take the scored output from one prediction's results, if they hold it in the expected shape."""
        output = outputs.get(self.output)
        if output is None or output.ndim != 2 or output.shape[1] != self.classes:
            return
        with self._lock:
            self._pending.append(output.copy())  # the caller gets the same array and may change it
            self._pending_rows += len(output)
            if self._pending_rows >= self._flush_at:
                self._flush()

    def _flush(self) -> None:
        """Bin the pending outputs into the window, oldest first (call with the lock held)."""
        if not self._pending:
            return
        rows = self._pending[0] if len(self._pending) == 1 else np.concatenate(self._pending)
        self._pending, self._pending_rows = [], 0
        # side="left": a row falls in bin i when i edges lie strictly below it, as the build counted.
        self._ring.push(np.searchsorted(self.edges, max_confidence(rows, self.kind)).astype(np.int16))

    @property
    def rows(self) -> int:
        with self._lock:
            self._flush()
            return self._ring.rows

    def counts(self) -> np.ndarray:
        """Rows per bin in the window."""
        with self._lock:
            self._flush()
            return self._ring.counts()[0]

    def score(self) -> float | None:
        """PSI of the window against the reference, or None before ``min_rows`` rows were seen."""
        with self._lock:
            self._flush()
            rows, counts = self._ring.rows, self._ring.counts()[0]
        if rows < self.min_rows:
            return None
        return float(psi(self.expected, counts / rows))
