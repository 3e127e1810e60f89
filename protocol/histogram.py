"""The latency histogram in telemetry: fixed log-spaced buckets that every agent and the coordinator share.

A window's percentiles are exact on the agent (it keeps the window's samples), but percentiles do not
add up: the p95 of a minute, an hour or a fleet cannot be made from the p95s of its windows. Counts per
bucket do add up, so each window also carries its requests per bucket, and any set of windows gives
its percentiles to within one bucket's width (25%; linear interpolation inside the bucket is usually
much closer).

Bucket ``i`` holds latencies in ``(BOUNDS_MS[i - 1], BOUNDS_MS[i]]``; bucket 0 everything up to
``BOUNDS_MS[0]`` and the last bucket everything above ``BOUNDS_MS[-1]`` (one minute).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Mapping

__all__ = ["BOUNDS_MS", "BUCKETS", "bucket_of", "quantiles"]

FIRST_MS = 0.01
GROWTH = 1.25
BUCKETS = 72
BOUNDS_MS: tuple[float, ...] = tuple(FIRST_MS * GROWTH**i for i in range(BUCKETS - 1))  # 0.01 ms .. 60 s


def bucket_of(latency_ms: float) -> int:
    """The bucket a latency falls in (negative or NaN latencies in bucket 0)."""
    return bisect_left(BOUNDS_MS, latency_ms) if latency_ms > 0 else 0


def quantiles(counts: Mapping[int, int], qs: Iterable[float]) -> list[float | None]:
    """The ``qs`` (fractions, e.g. 0.95) of the latencies counted in ``counts`` (bucket -> requests), in ms,
    interpolated linearly inside the bucket that holds each; None for every q where nothing was counted.
    The open last bucket answers with its lower bound."""
    ordered = sorted((b, n) for b, n in counts.items() if n > 0)
    total = sum(n for _, n in ordered)
    result: list[float | None] = []
    for q in qs:
        if total == 0:
            result.append(None)
            continue
        rank = min(max(q, 0.0), 1.0) * total
        seen = 0
        for bucket, n in ordered:
            if seen + n >= rank:
                lower = BOUNDS_MS[bucket - 1] if bucket > 0 else 0.0
                if bucket >= len(BOUNDS_MS):
                    result.append(lower)
                else:
                    result.append(lower + (BOUNDS_MS[bucket] - lower) * (rank - seen) / n)
                break
            seen += n
    return result
