"""Cost of drift tracking per request (batch 1), next to the model's own inference time.

Run by hand: python bench/bench_drift.py
"""

from __future__ import annotations

import time

import numpy as np

from agent.drift import DriftMonitor
from protocol.model_card import InputStats

QUANTILES = [i / 10 for i in range(11)]


def main() -> None:
    rng = np.random.default_rng(0)
    for features in (64, 768, 3072):
        reference = rng.standard_normal((2000, features)).astype(np.float32)
        stats = InputStats(
            samples=2000, quantiles=QUANTILES, edges=np.quantile(reference, QUANTILES, axis=0).T.tolist(),
            mean=reference.mean(0).tolist(), std=reference.std(0).tolist(),
        )  # fmt: skip
        monitor = DriftMonitor({"x": stats}, window=500)
        rows = rng.standard_normal((3000, 1, features)).astype(np.float32)
        for row in rows[:200]:
            monitor.observe({"x": row})
        started = time.perf_counter()
        for row in rows:
            monitor.observe({"x": row})
        per_request_us = (time.perf_counter() - started) / len(rows) * 1e6
        started = time.perf_counter()
        monitor.score()
        score_ms = (time.perf_counter() - started) * 1e3
        print(f"{features:5d} features: observe {per_request_us:7.1f} us/request; score {score_ms:.2f} ms per window")


if __name__ == "__main__":
    main()
