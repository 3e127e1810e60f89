"""Latency of several candidates timed side by side: interleaved rounds, a median and a confidence interval each.

Timing one candidate after another lets a load change on the machine land on one of them: a
dynamic-INT8 CNN once ranked 0.81x FP32 that was 2.8-3.5x slower measured at the same time. Here
each round runs every candidate in turn (the order rotates from round to round), a few runs each;
a candidate's samples are its per-round medians, so a slow stretch of the machine hits every
candidate's same round. The interval is the distribution-free one for a median: order statistics
of the samples whose binomial coverage is at least ``confidence`` (the widest, min to max, when
there are too few samples to reach it; its coverage is reported).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

__all__ = ["Latency", "interleaved_latency", "median_interval", "separated"]


@dataclass(frozen=True)
class Latency:
    median_ms: float
    low_ms: float
    high_ms: float
    coverage: float  # of [low, high] for the median
    rounds: int
    runs: int  # in all, over the rounds


def median_interval(samples: list[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """(low, high, coverage) of a distribution-free confidence interval for the median of ``samples``."""
    ordered = sorted(samples)
    n = len(ordered)
    if n == 1:
        return ordered[0], ordered[0], 0.0

    def coverage(k: int) -> float:  # P(X(k) <= median <= X(n+1-k)), 1-based k
        return 1.0 - 2.0 * sum(math.comb(n, i) for i in range(k)) / 2.0**n

    k = 1
    while k + 1 <= n // 2 and coverage(k + 1) >= confidence:
        k += 1
    return ordered[k - 1], ordered[n - k], coverage(k)


def separated(a: Latency, b: Latency) -> bool:
    """Whether the intervals do not overlap: only then is one faster than the other."""
    return a.high_ms < b.low_ms or b.high_ms < a.low_ms


def interleaved_latency(
    runners: Mapping[str, Callable[[], object]],
    *,
    rounds: int,
    runs_per_round: int,
    budget_s: float,
    warmup: int = 2,
) -> dict[str, Latency]:
    """Time each runner (one inference) in ``rounds`` interleaved rounds of up to ``runs_per_round`` runs,
    spending about ``budget_s`` per runner in all (at least one run a round)."""
    names = list(runners)
    for name in names:
        for _ in range(warmup):
            runners[name]()
    per_round_s = budget_s / max(rounds, 1)
    medians: dict[str, list[float]] = {n: [] for n in names}
    counts = dict.fromkeys(names, 0)
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            run = runners[name]
            times: list[float] = []
            deadline = time.perf_counter() + per_round_s
            while len(times) < runs_per_round and (not times or time.perf_counter() < deadline):
                start = time.perf_counter()
                run()
                times.append((time.perf_counter() - start) * 1000)
            medians[name].append(statistics.median(times))
            counts[name] += len(times)
    result = {}
    for name, samples in medians.items():
        low, high, cover = median_interval(samples)
        result[name] = Latency(statistics.median(samples), low, high, cover, len(samples), counts[name])
    return result
