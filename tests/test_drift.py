"""Drift statistics against reference computations, and the alert path."""

from __future__ import annotations

import numpy as np
import pytest

from agent.drift import DriftMonitor, InputDrift, psi
from protocol.model_card import InputStats

QUANTILES = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]


def _stats(reference: np.ndarray) -> InputStats:
    rows = reference.reshape(len(reference), -1)
    return InputStats(
        samples=len(rows),
        quantiles=QUANTILES,
        edges=np.quantile(rows, QUANTILES, axis=0).T.tolist(),
        mean=rows.mean(axis=0).tolist(),
        std=rows.std(axis=0).tolist(),
    )


def test_psi_matches_the_textbook_formula() -> None:
    expected = np.array([0.25, 0.25, 0.25, 0.25])
    actual = np.array([0.1, 0.2, 0.3, 0.4])
    by_hand = sum((a - e) * np.log(a / e) for a, e in zip(actual, expected, strict=True))
    assert psi(expected, actual) == pytest.approx(by_hand)
    assert psi(expected, expected) == pytest.approx(0.0)


def test_bin_counts_match_numpy_histograms() -> None:
    rng = np.random.default_rng(0)
    reference = rng.standard_normal((2000, 3))
    drift = InputDrift(_stats(reference), window=300)
    sample = rng.standard_normal((300, 3)) + 0.5
    drift.observe(sample)
    edges = np.quantile(reference, QUANTILES, axis=0)
    for feature in range(3):
        counts = np.array([(sample[:, feature] <= edges[0, feature]).sum()] + [
            ((sample[:, feature] > lo) & (sample[:, feature] <= hi)).sum()
            for lo, hi in zip(edges[:-1, feature], edges[1:, feature], strict=True)
        ] + [(sample[:, feature] > edges[-1, feature]).sum()])  # fmt: skip
        expected = drift.expected
        assert drift.scores()[feature] == pytest.approx(float(psi(expected, counts / 300)))  # type: ignore[index]


def test_the_score_rises_with_a_shift_and_falls_back_as_the_window_slides() -> None:
    rng = np.random.default_rng(1)
    reference = rng.standard_normal((5000, 16)).astype(np.float32)
    monitor = DriftMonitor({"x": _stats(reference)}, window=400, min_rows=50)
    assert monitor.score() == (None, {})
    for _ in range(40):
        monitor.observe({"x": rng.standard_normal((10, 16)).astype(np.float32)})
    calm, _ = monitor.score()
    assert calm is not None and calm < 0.1
    shifted = rng.standard_normal((400, 16)).astype(np.float32)
    shifted[:, 3] += 2.0  # one feature moves by two standard deviations
    monitor.observe({"x": shifted})
    score, worst = monitor.score()
    assert score is not None and score > calm
    assert next(iter(worst)) == "x[3]" and worst["x[3]"] > 1.0
    for _ in range(40):
        monitor.observe({"x": rng.standard_normal((10, 16)).astype(np.float32)})
    again, _ = monitor.score()
    assert again is not None and again < 0.1, "old rows leave the window"


def test_inputs_without_statistics_or_of_another_shape_are_ignored() -> None:
    rng = np.random.default_rng(2)
    monitor = DriftMonitor({"x": _stats(rng.standard_normal((100, 4)))}, min_rows=1)
    monitor.observe({"y": np.zeros((5, 4)), "x": np.zeros((5, 7))})
    assert monitor.score() == (None, {})
