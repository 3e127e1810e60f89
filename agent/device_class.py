"""Device classes: the typed per-hardware config (runtime chain, threads, limits) and its detection."""

from __future__ import annotations

import platform
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edgefleet.common.errors import ConfigError
from edgefleet.firmware_configs import CONFIG_DIR
from edgefleet.protocol.errors import describe_errors

__all__ = ["DeviceClass", "Probe", "detect_device_class", "load_device_class", "probe_hardware"]

MiB = 1024 * 1024


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Detect(_Strict):
    arch: list[str] = Field(description="`uname -m` values of this class, e.g. aarch64, x86_64.")
    device_tree_model: list[str] = Field(
        default_factory=list, description="Substrings of /proc/device-tree/model that identify the board."
    )
    tegra_release: str | None = Field(default=None, description="Prefix of /etc/nv_tegra_release, e.g. '# R36'.")


class RuntimeSettings(_Strict):
    chain: list[str] = Field(min_length=1, description="Runtimes to try in order; the first that loads serves.")
    intra_op_threads: int = Field(ge=0, le=256, description="Threads inside one operator (0: backend default).")
    inter_op_threads: int = Field(default=1, ge=0, le=64, description="Operators run in parallel.")
    allow_spinning: bool = Field(
        default=False,
        description="Let ONNX Runtime's idle threads busy-wait for work: a little less latency for a lone caller, "
        "CPU taken from the API, the micro-batcher and the device's apps (off: +25-30% batched throughput "
        "with 32 callers on 2 cores).",
    )
    preferred_precision: Literal["fp32", "fp16", "int8"] = Field(
        description="Precision the compressor should build bundles in for this class."
    )


class Batching(_Strict):
    max_batch_size: int = Field(ge=1, le=1024, description="Largest micro-batch of concurrent requests.")
    max_delay_ms: float = Field(ge=0, le=1000, description="Longest a request waits for others to join its batch.")


class Limits(_Strict):
    memory_max_mb: int = Field(ge=64, description="systemd MemoryMax for the agent.")
    cpu_quota_percent: int = Field(ge=10, le=6400, description="systemd CPUQuota (100 = one core).")


class TelemetrySettings(_Strict):
    interval_s: float = Field(gt=0, le=3600, description="Seconds between telemetry messages.")


class OutboxSettings(_Strict):
    max_mb: int = Field(ge=1, le=65536, description="Largest size of the durable outbox.")
    max_messages: int = Field(ge=100, description="Most messages the outbox keeps.")

    @property
    def max_bytes(self) -> int:
        return self.max_mb * MiB


class Thermal(_Strict):
    throttle_c: float = Field(
        gt=0, lt=150, description="At this SoC temperature optional work pauses: federated training is declined."
    )
    critical_c: float = Field(
        gt=0, lt=150, description="At this, the agent sheds load (requests get UNAVAILABLE); the coordinator alerts."
    )

    @model_validator(mode="after")
    def _ordered(self) -> Thermal:
        if self.throttle_c >= self.critical_c:
            raise ValueError("throttle_c must be below critical_c")
        return self


class Selection(_Strict):
    """Constraints the compressor's choice of candidate must meet for this class."""

    max_metric_drop: float = Field(ge=0, description="Largest allowed drop of the task metric vs the reference.")
    max_latency_ms: float | None = Field(
        default=None, gt=0, description="Largest median batch-1 latency, as measured where compression runs."
    )
    max_size_mb: float = Field(gt=0, description="Largest model file.")
    formats: list[Literal["onnx", "tflite"]] = Field(min_length=1, description="Model formats the chain can load.")


class DeviceClass(_Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    description: str
    detect: Detect
    runtime: RuntimeSettings
    batching: Batching
    limits: Limits
    telemetry: TelemetrySettings
    outbox: OutboxSettings
    thermal: Thermal
    selection: Selection


def load_device_class(name: str, directory: Path = CONFIG_DIR) -> DeviceClass:
    """Read ``<directory>/<name>.toml``; raise ConfigError naming key path, value and reason."""
    path = directory / f"{name}.toml"
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        known = ", ".join(sorted(p.stem for p in directory.glob("*.toml")))
        raise ConfigError(str(path), [f"unknown device class {name!r}; known: {known}"]) from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(str(path), [f"cannot read: {exc}"]) from None
    try:
        device_class = DeviceClass.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(str(path), describe_errors(exc, values=True)) from None
    if device_class.name != name:
        raise ConfigError(str(path), [f"name {device_class.name!r} differs from the file name {name!r}"])
    return device_class


class Probe(BaseModel):
    """What the hardware says about itself."""

    arch: str
    device_tree_model: str | None = None
    tegra_release: str | None = None


def probe_hardware(root: Path = Path("/")) -> Probe:
    def read(rel: str) -> str | None:
        try:
            return (root / rel).read_text(errors="replace").replace("\x00", "").strip() or None
        except OSError:
            return None

    return Probe(
        arch=platform.machine(),
        device_tree_model=read("proc/device-tree/model"),
        tegra_release=read("etc/nv_tegra_release"),
    )


def detect_device_class(probe: Probe, directory: Path = CONFIG_DIR) -> str | None:
    """The shipped class that matches the probe best, or None.

    A class whose device-tree model matches wins; a class without device-tree patterns (the x86
    gateway) matches only boards that have no device tree.
    """
    candidates = [load_device_class(p.stem, directory) for p in sorted(directory.glob("*.toml"))]
    for device_class in candidates:
        d = device_class.detect
        if probe.arch not in d.arch or not d.device_tree_model or probe.device_tree_model is None:
            continue
        if any(pattern in probe.device_tree_model for pattern in d.device_tree_model) and (
            d.tegra_release is None or (probe.tegra_release or "").startswith(d.tegra_release)
        ):
            return device_class.name
    if probe.device_tree_model is None:
        generic = [c for c in candidates if probe.arch in c.detect.arch and not c.detect.device_tree_model]
        if generic:
            return generic[0].name
    return None
