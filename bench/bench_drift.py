"""Cost of drift tracking per request (batch 1), next to the model's own inference time: input drift
for inputs of a few sizes, and output confidence drift for a 10-class classifier's logits.

Run by hand: python bench/bench_drift.py
"""

from __future__ import annotations

import time

import numpy as np

from agent.drift import ConfidenceMonitor, DriftMonitor
from compression.stats import confidence_stats
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

    logits = rng.standard_normal((5000, 10)).astype(np.float32)
    logits[np.arange(5000), rng.integers(0, 10, 5000)] += 4.0
    reference = confidence_stats("logits", logits[:2000])
    assert reference is not None
    confidence = ConfidenceMonitor(reference, window=500)
    rows = [{"logits": logits[i : i + 1]} for i in range(2000, 5000)]
    for outputs in rows[:200]:
        confidence.observe(outputs)
    started = time.perf_counter()
    for outputs in rows:
        confidence.observe(outputs)
    per_request_us = (time.perf_counter() - started) / len(rows) * 1e6
    started = time.perf_counter()
    confidence.score()
    score_ms = (time.perf_counter() - started) * 1e3
    print(f"   10 classes: confidence observe {per_request_us:5.1f} us/request; score {score_ms:.2f} ms per window")


if __name__ == "__main__":
    main()
