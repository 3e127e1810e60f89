"""Inference counters and latencies, collected per reporting window."""

from __future__ import annotations

import glob
import threading
import time

import numpy as np
import psutil

from protocol.messages import Telemetry

__all__ = ["InferenceStats", "soc_temperature_c"]


def soc_temperature_c(pattern: str = "/sys/class/thermal/thermal_zone*/temp") -> float | None:
    """The hottest thermal zone in degrees Celsius, or None where the kernel exposes none."""
    readings = []
    for path in glob.glob(pattern):
        try:
            with open(path) as fh:
                readings.append(int(fh.read().strip()) / 1000.0)
        except (OSError, ValueError):
            continue
    return max(readings) if readings else None


class InferenceStats:
    def __init__(self, max_samples: int = 10_000) -> None:
        self._lock = threading.Lock()
        self._max = max_samples
        self._reset(time.monotonic())
        self.total_inferences = 0
        self.total_errors = 0
        self._process = psutil.Process()
        self._process.cpu_percent(None)  # the first call only starts the measurement

    def _reset(self, now: float) -> None:
        self._window_start = now
        self._count = 0
        self._errors = 0
        self._latencies: list[float] = []

    def record(self, latency_ms: float) -> None:
        with self._lock:
            self._count += 1
            self.total_inferences += 1
            if len(self._latencies) < self._max:
                self._latencies.append(latency_ms)

    def record_error(self) -> None:
        with self._lock:
            self._errors += 1
            self.total_errors += 1

    def take(
        self, device_id: str, bundle_digest: str | None, runtime: str | None = None, skipped: list[str] | None = None
    ) -> Telemetry:
        """Close the current window and describe it."""
        now = time.monotonic()
        with self._lock:
            count, errors, latencies, start = self._count, self._errors, self._latencies, self._window_start
            self._reset(now)
        lat = np.asarray(latencies) if latencies else None
        return Telemetry(
            device_id=device_id,
            window_s=round(now - start, 3),
            bundle_digest=bundle_digest,
            runtime=runtime,
            runtime_skipped=skipped or [],
            inference_count=count,
            error_count=errors,
            latency_ms_mean=None if lat is None else float(lat.mean()),
            latency_ms_p50=None if lat is None else float(np.percentile(lat, 50)),
            latency_ms_p95=None if lat is None else float(np.percentile(lat, 95)),
            cpu_percent=self._process.cpu_percent(None),
            rss_bytes=self._process.memory_info().rss,
            soc_temp_c=soc_temperature_c(),
        )
