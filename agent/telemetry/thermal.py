"""The device class's [thermal] limits, acted on: above ``throttle_c`` optional work pauses (the device declines
federated training rounds), above ``critical_c`` the agent sheds load (inference requests are answered
UNAVAILABLE with the temperature) until the chip is back below the limit by HYSTERESIS_C. Each change is
logged; every telemetry window carries the temperature, from which the coordinator raises ``overheating``.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Literal

from edgefleet.agent.device_class import Thermal
from edgefleet.agent.telemetry.stats import soc_temperature_c

__all__ = ["HYSTERESIS_C", "MARKER_NAME", "ThermalGuard", "ThermalState"]

log = logging.getLogger(__name__)

HYSTERESIS_C = 3.0  # a state is left only this far below the limit that set it: no flapping at the line
ThermalState = Literal["normal", "throttled", "critical"]
MARKER_NAME = "thermal-throttled"  # in the agent's data_dir while not normal


class ThermalGuard:
    """``check`` reads the hottest thermal zone (``zones``, a glob) and moves between normal, throttled and
    critical; while not normal, ``marker`` holds the reason (the SuperNode's ClientApp reads it)."""

    def __init__(self, limits: Thermal, *, zones: str, marker: Path) -> None:
        self.limits, self.zones, self.marker = limits, zones, marker
        self.state: ThermalState = "normal"
        self.celsius: float | None = None
        self._lock = threading.Lock()
        marker.unlink(missing_ok=True)  # a state from before a restart is measured again

    def check(self) -> ThermalState:
        celsius = soc_temperature_c(self.zones)
        with self._lock:
            self.celsius = celsius
            new = self._next(celsius)
            if new == self.state:
                return new
            old, self.state = self.state, new
        self._announce(old, new, celsius)
        return new

    def _next(self, celsius: float | None) -> ThermalState:
        if celsius is None:
            return "normal"  # no thermal zone: nothing measured, nothing to act on
        limits = self.limits
        if celsius >= limits.critical_c or (self.state == "critical" and celsius > limits.critical_c - HYSTERESIS_C):
            return "critical"
        if celsius >= limits.throttle_c or (self.state != "normal" and celsius > limits.throttle_c - HYSTERESIS_C):
            return "throttled"
        return "normal"

    def _announce(self, old: ThermalState, new: ThermalState, celsius: float | None) -> None:
        reason = self.reason()
        if new == "normal":
            self.marker.unlink(missing_ok=True)
            log.warning("SoC back to %.1f °C (throttle at %g °C): %s ended", celsius or 0.0, self.limits.throttle_c,
                        old)  # fmt: skip
            return
        self.marker.write_text(reason + "\n")
        (log.error if new == "critical" else log.warning)("%s", reason)

    def reason(self) -> str:
        if self.state == "critical":
            critical = self.limits.critical_c
            return f"shedding load: the SoC is at {self.celsius:.1f} °C, at or over its critical {critical:g} °C"
        if self.state == "throttled":
            return (
                f"throttled: the SoC is at {self.celsius:.1f} °C, at or over {self.limits.throttle_c:g} °C; "
                "federated training pauses"
            )
        return ""

    def shedding(self) -> str | None:
        """Why requests are refused now, or None while the chip is below its critical limit."""
        with self._lock:
            return self.reason() if self.state == "critical" else None
