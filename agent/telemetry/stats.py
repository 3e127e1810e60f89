"""Inference counters and latencies, collected per reporting window."""

from __future__ import annotations

import glob
import logging
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import psutil

from edgefleet.protocol import histogram
from edgefleet.protocol.messages import CLIENT_ERROR_KINDS, MAX_ERROR_KINDS, Telemetry

__all__ = ["OTHER_ERROR_KIND", "InferenceStats", "disk_usage", "soc_temperature_c"]

log = logging.getLogger(__name__)

OTHER_ERROR_KIND = "other"  # where kinds beyond MAX_ERROR_KINDS in one window are counted


# Zones whose reading is not the chip's: Jetson's PMIC-Die zone reports a fixed 100 C.
_NOT_THE_CHIP = ("pmic",)
_PLAUSIBLE_C = (-40.0, 150.0)  # outside: a sensor error or a disconnected zone (e.g. -273 C)


THERMAL_ZONES = "/sys/class/thermal/thermal_zone*"


def soc_temperature_c(zones: str = THERMAL_ZONES) -> float | None:
    """The hottest thermal zone in degrees Celsius, or None where the kernel exposes none.

    Linux thermal zones cover the Pi (``cpu-thermal``), the Jetsons (``CPU-therm``, ``GPU-therm``, ...)
    and x86 (``x86_pkg_temp``, ``acpitz``); zones that do not measure the chip, and readings no chip can
    have, are left out.
    """
    readings = []
    for zone in glob.glob(zones):
        try:
            celsius = int(Path(zone, "temp").read_text().strip()) / 1000.0
        except (OSError, ValueError):
            continue
        try:
            kind = Path(zone, "type").read_text().strip().lower()
        except OSError:  # an older kernel: no type, the reading stands
            kind = ""
        if any(word in kind for word in _NOT_THE_CHIP) or not _PLAUSIBLE_C[0] <= celsius <= _PLAUSIBLE_C[1]:
            continue
        readings.append(celsius)
    return max(readings) if readings else None


def disk_usage(path: Path) -> tuple[int, float] | None:
    """Free bytes and used percent of the filesystem holding ``path``, or None where it cannot be read."""
    try:
        usage = psutil.disk_usage(str(path))
    except OSError as exc:
        log.warning("disk usage of %s unavailable: %s", path, exc)
        return None
    return usage.free, usage.percent


class InferenceStats:
    def __init__(self, max_samples: int = 10_000, *, thermal_zones: str = THERMAL_ZONES) -> None:
        self._lock = threading.Lock()
        self._thermal_zones = thermal_zones
        self._max = max_samples
        self._reset(time.monotonic())
        self.total_inferences = 0
        self.total_errors = 0
        self._process = psutil.Process()
        self._process.cpu_percent(None)  # the first call only starts the measurement
        psutil.cpu_percent(None)  # the device's, likewise

    def _reset(self, now: float) -> None:
        self._window_start = now
        self._count = 0
        self._errors: Counter[str] = Counter()
        self._latencies: list[float] = []
        self._histogram: Counter[int] = Counter()  # every request, where the samples stop at max_samples

    def record(self, latency_ms: float) -> None:
        bucket = histogram.bucket_of(latency_ms)
        with self._lock:
            self._count += 1
            self.total_inferences += 1
            self._histogram[bucket] += 1
            if len(self._latencies) < self._max:
                self._latencies.append(latency_ms)

    def record_error(self, kind: str) -> None:
        """Count one failed request; ``kind`` names the failure (a gRPC status in snake case, or ``runtime``)."""
        with self._lock:
            # A window holds at most MAX_ERROR_KINDS kinds, the message's limit; later new kinds share one.
            kind = kind[:64]
            if kind not in self._errors and len(self._errors) >= MAX_ERROR_KINDS - 1:
                kind = OTHER_ERROR_KIND
            self._errors[kind] += 1
            self.total_errors += 1

    def take(
        self,
        device_id: str,
        bundle_digest: str | None,
        runtime: str | None = None,
        skipped: list[str] | None = None,
        *,
        data_dir: Path | None = None,
    ) -> Telemetry:
        """Close the current window and describe it; ``data_dir``: report the free space of its filesystem."""
        now = time.monotonic()
        with self._lock:
            count, errors, latencies, start = self._count, self._errors, self._latencies, self._window_start
            buckets = self._histogram
            self._reset(now)
        lat = np.asarray(latencies) if latencies else None
        p50, p95, p99 = (None, None, None) if lat is None else (float(p) for p in np.percentile(lat, (50, 95, 99)))
        disk = disk_usage(data_dir) if data_dir is not None else None
        return Telemetry(
            device_id=device_id,
            window_s=round(now - start, 3),
            bundle_digest=bundle_digest,
            runtime=runtime,
            runtime_skipped=skipped or [],
            inference_count=count,
            error_count=sum(n for kind, n in errors.items() if kind not in CLIENT_ERROR_KINDS),
            errors_by_kind=dict(errors),
            latency_ms_mean=None if lat is None else float(lat.mean()),
            latency_ms_p50=p50,
            latency_ms_p95=p95,
            latency_ms_p99=p99,
            latency_histogram=dict(buckets),
            disk_free_bytes=None if disk is None else disk[0],
            disk_used_percent=None if disk is None else disk[1],
            cpu_percent=self._process.cpu_percent(None),
            rss_bytes=self._process.memory_info().rss,
            soc_temp_c=soc_temperature_c(self._thermal_zones),
            device_cpu_percent=psutil.cpu_percent(None),
            memory_used_percent=psutil.virtual_memory().percent,
        )
