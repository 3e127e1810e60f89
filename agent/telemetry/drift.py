"""Drift on the device, scored with the population stability index against the reference the bundle's
manifest carries: each input's recent rows (per-feature quantile edges), and the confidence of the
model's recent outputs (the top class probability of each row, binned at the reference's deciles).

Cheap enough for every request: a request only leaves a copy of its rows (at most ``MAX_FEATURES``
evenly spread columns of a wide input, such as an image's pixels); binning, counting and scoring
happen off the request path, when telemetry asks for a score, on at most a window of recent rows.
"""

from __future__ import annotations

import threading
from collections import deque

import numpy as np

from edgefleet.protocol.model_card import ConfidenceKind, ConfidenceStats, InputStats

__all__ = ["ConfidenceMonitor", "DriftMonitor", "InputDrift", "max_confidence", "psi"]

EPSILON = 1e-4
# A wider input is watched through this many of its features, evenly spread (every 12th pixel of a
# 32x32x3 image): the mean PSI of a spread sample follows that of all features, at a fraction of the cost.
MAX_FEATURES = 256


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


class _Recent:
    """Copies of the rows requests handed in, the newest ``window`` of them at most, waiting to be binned."""

    def __init__(self, window: int) -> None:
        self.window = window
        self._arrays: deque[np.ndarray] = deque()
        self._rows = 0

    def add(self, rows: np.ndarray) -> None:
        self._arrays.append(rows)
        self._rows += len(rows)
        while self._rows - len(self._arrays[0]) >= self.window:  # the oldest would leave the window anyway
            self._rows -= len(self._arrays.popleft())

    def take(self) -> np.ndarray | None:
        """The waiting rows, oldest first (at most ``window``), and none left waiting."""
        if not self._arrays:
            return None
        rows = self._arrays[0] if len(self._arrays) == 1 else np.concatenate(self._arrays)
        self._arrays.clear()
        self._rows = 0
        return rows[-self.window :]


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
    """Sliding window of one input's bin indices, per feature, against its reference quantiles; not
    thread-safe (DriftMonitor locks)."""

    def __init__(self, stats: InputStats, window: int, max_features: int = MAX_FEATURES) -> None:
        edges = np.asarray(stats.edges, dtype=np.float64).T  # (quantiles, features)
        self.input_features = edges.shape[1]
        # The input's features watched, by index: all of them, or an even spread of max_features.
        self.watched = np.unique(
            np.linspace(0, self.input_features - 1, min(max_features, self.input_features)).round().astype(np.intp)
        )
        self._all = len(self.watched) == self.input_features
        self.edges = edges if self._all else edges[:, self.watched]
        self.features = self.edges.shape[1]
        quantiles = np.asarray(stats.quantiles, dtype=np.float64)
        # Bins: below the first edge, between each pair of edges, above the last one.
        self.bins = len(quantiles) + 1
        if stats.expected is not None:  # counted at build time with the rule the binning uses
            expected = np.asarray(stats.expected, dtype=np.float64)
        else:  # older bundles: shares from the quantiles (wrong where a feature has ties)
            shares = np.concatenate([[quantiles[0]], np.diff(quantiles), [1.0 - quantiles[-1]]])
            expected = np.broadcast_to(shares, (self.input_features, self.bins))
        self.expected = expected if self._all else expected[self.watched]
        self.window = window
        self._recent = _Recent(window)
        self._ring = _BinRing(window, self.features, self.bins)

    def observe(self, batch: np.ndarray) -> None:
        """Keep a copy of the watched features of ``batch``'s rows (the caller may reuse its array)."""
        rows = batch.reshape(batch.shape[0], -1)
        if rows.shape[1] != self.input_features:
            return  # a shape the statistics do not describe (e.g. a different sequence length)
        self._recent.add(rows.copy() if self._all else rows[:, self.watched])

    def take_waiting(self) -> np.ndarray | None:
        """The rows observed since the last binning (the newest ``window`` of them)."""
        return self._recent.take()

    def push(self, rows: np.ndarray | None) -> None:
        """Bin ``rows`` into the window: each value's bin is the number of edges below it."""
        if rows is None:
            return
        bins = np.zeros(rows.shape, dtype=np.int16)
        for edge in self.edges:  # one pass per edge keeps the temporaries at the rows' size
            bins += rows > edge
        self._ring.push(bins)

    def binned_scores(self) -> tuple[np.ndarray | None, int]:
        """PSI per watched feature over the binned window (None before any row), and its rows."""
        rows = self._ring.rows
        return (psi(self.expected, self._ring.counts() / rows) if rows else None), rows

    @property
    def rows(self) -> int:
        self.push(self.take_waiting())
        return self._ring.rows

    def counts(self) -> np.ndarray:
        """Rows per (watched feature, bin) in the window."""
        self.push(self.take_waiting())
        return self._ring.counts()

    def scores(self) -> np.ndarray | None:
        """PSI per watched feature over the window, or None before any row was seen."""
        self.push(self.take_waiting())
        return self.binned_scores()[0]


class DriftMonitor:
    """All inputs of one model that have reference statistics; thread-safe: requests observe while the
    telemetry thread scores, and binning happens outside the lock requests take."""

    def __init__(self, reference: dict[str, InputStats], *, window: int = 500, min_rows: int = 50) -> None:
        self.inputs = {name: InputDrift(stats, window) for name, stats in reference.items()}
        self.min_rows = min_rows
        self._lock = threading.Lock()  # the waiting rows
        self._scoring = threading.Lock()  # the binned windows: one scorer at a time

    def observe(self, inputs: dict[str, np.ndarray]) -> None:
        with self._lock:
            for name, drift in self.inputs.items():
                if name in inputs:
                    drift.observe(inputs[name])

    def score(self) -> tuple[float | None, dict[str, float]]:
        """The model's drift score (mean PSI over the watched features) and the worst features by name."""
        with self._scoring:
            with self._lock:
                waiting = {name: d.take_waiting() for name, d in self.inputs.items()}
            per_input = {}
            for name, drift in self.inputs.items():
                drift.push(waiting[name])
                per_input[name] = drift.binned_scores()
        worst: dict[str, float] = {}
        values = []
        for name, (scores, rows) in per_input.items():
            if scores is None or rows < self.min_rows:
                continue
            values.append(scores)
            watched = self.inputs[name].watched
            for index in np.argsort(scores)[-3:][::-1]:
                worst[f"{name}[{int(watched[index])}]"] = round(float(scores[index]), 4)
        if not values:
            return None, {}
        return float(np.mean(np.concatenate(values))), dict(sorted(worst.items(), key=lambda kv: -kv[1])[:3])


class ConfidenceMonitor:
    """Sliding window of the per-row top confidence of one output, against its reference bins; thread-safe."""

    def __init__(self, reference: ConfidenceStats, *, window: int = 500, min_rows: int = 50) -> None:
        self.output = reference.output
        self.kind: ConfidenceKind = reference.kind
        self.classes = reference.classes
        self.edges = np.asarray(reference.edges, dtype=np.float64)
        self.expected = np.asarray(reference.expected, dtype=np.float64)
        self.min_rows = min_rows
        self._ring = _BinRing(window, 1, len(self.expected))
        self._lock = threading.Lock()
        # Outputs wait here and are binned when a score is asked for: a handful of numpy calls per
        # prediction cost more than a small model's inference (~8 us against ~120 us for the digits CNN).
        self._recent = _Recent(window)

    def observe(self, outputs: dict[str, np.ndarray]) -> None:
        """Take the scored output from one prediction's results, if they hold it in the expected shape."""
        output = outputs.get(self.output)
        if output is None or output.ndim != 2 or output.shape[1] != self.classes:
            return
        with self._lock:
            self._recent.add(output.copy())  # the caller gets the same array and may change it

    def _flush(self) -> None:
        """Bin the waiting outputs into the window, oldest first (call with the lock held)."""
        rows = self._recent.take()
        if rows is None:
            return
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
