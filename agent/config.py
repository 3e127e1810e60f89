"""The agent's typed configuration (TOML), which forbids unknown keys and explains every error."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from edgefleet.common.mqtt import BrokerConfig
from edgefleet.common.settings import StrictModel, load_toml_model, parse_model
from edgefleet.protocol.topics import validate_device_id

__all__ = ["AgentConfig", "ApiConfig", "FeedbackConfig", "FetchConfig", "StoreConfig", "load_config"]


class ApiConfig(StrictModel):
    socket: Path | None = Field(
        default=None, description="Unix socket of the local gRPC API; default <data_dir>/agent.sock."
    )
    tcp_port: int | None = Field(
        default=None, ge=0, le=65535, description="Also listen on 127.0.0.1:PORT (0 picks a free port)."
    )
    max_message_bytes: int = Field(default=16 * 1024 * 1024, ge=1024, description="Largest gRPC message.")
    workers: int = Field(default=4, ge=1, le=64, description="Threads serving requests.")


class FetchConfig(StrictModel):
    chunk_bytes: int = Field(default=64 * 1024, ge=1024, le=256 * 1024, description="Bytes per chunk request.")
    chunk_timeout_s: float = Field(default=10.0, gt=0, description="Wait for one chunk before asking again.")
    retries: int = Field(default=5, ge=0, description="Requests of one chunk before the download pauses.")
    window: int = Field(default=8, ge=1, le=64, description="Chunk requests in flight at once.")
    retry_backoff_s: float = Field(default=5.0, gt=0, description="Pause before a failed download resumes.")
    http_mirror: str | None = Field(
        default=None,
        title="HTTP artifact mirror",
        description="http(s)://host:port of a mirror of /api/v1/artifacts/{manifest|file}/{digest}, such as "
        "the coordinator's API. Manifests and files are downloaded from it first (resuming with Range "
        "requests) and over MQTT chunks when it fails; its bytes are trusted only after the hash checks.",
    )
    http_ca_file: Path | None = Field(default=None, description="CA bundle to verify the mirror's TLS certificate.")
    http_token_file: Path | None = Field(
        default=None, description="File holding a bearer token (e.g. read-only) the mirror requires."
    )
    http_timeout_s: float = Field(default=10.0, gt=0, description="Wait for the mirror to connect or send data.")

    @field_validator("http_mirror")
    @classmethod
    def _check_mirror(cls, url: str | None) -> str | None:
        if url is None:
            return None
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
            raise ValueError("expected http://host:port or https://host:port")
        return url.rstrip("/")


class StoreConfig(StrictModel):
    keep_bundles: int = Field(default=3, ge=2, le=100, description="Bundles kept on disk; older ones are deleted.")
    crash_loop_restarts: int = Field(
        default=3, ge=2, le=100, description="Unclean starts within the window that revert the last activation."
    )
    crash_loop_window_s: float = Field(default=300.0, gt=0, description="Window for counting unclean starts.")


class FeedbackConfig(StrictModel):
    remember_requests: int = Field(default=1000, ge=0, description="Recent requests whose inputs are kept.")
    remember_s: float = Field(default=600.0, gt=0, description="How long a request can still get feedback.")
    max_mb: int = Field(default=256, ge=1, description="Largest size of the stored training samples.")
    max_age_days: float = Field(default=30.0, gt=0, description="Samples older than this are deleted.")


class FederatedConfig(StrictModel):
    enabled: bool = Field(default=True, description="Take part in federated campaigns the coordinator assigns.")
    startup_timeout_s: float = Field(default=60.0, gt=0, description="Longest wait for the SuperNode to register.")
    max_restarts: int = Field(default=3, ge=0, description="Restarts of a SuperNode that died, per campaign.")
    architectures: list[str] = Field(
        default_factory=list,
        max_length=100,
        description="Import paths (pkg.module:factory) a campaign may train here, besides the built-in "
        "architectures and installed edgefleet.architectures entry points; nothing else a message names is imported.",
    )


class DriftConfig(StrictModel):
    threshold: float = Field(default=0.25, gt=0, description="Drift score (mean PSI) that raises an alert.")
    window: int = Field(default=500, ge=50, le=100_000, description="Recent rows compared with the reference.")


class AgentConfig(StrictModel):
    device_id: str = Field(title="Device id", description="Unique id; one MQTT topic level.")
    device_class: str = Field(
        description="Hardware class (a file in firmware_configs/); bundles for other classes are refused."
    )
    device_class_dir: Path | None = Field(
        default=None, description="Folder of device-class files, instead of the shipped firmware_configs/."
    )
    data_dir: Path = Field(description="Where bundles, state and the API socket live.")
    trusted_keys: list[Path] = Field(min_length=1, description="PEM ed25519 public keys that may sign bundles.")
    command_keys: list[Path] = Field(
        default_factory=list,
        description="PEM ed25519 public keys that may sign commands; with none, every command is refused.",
    )
    broker: BrokerConfig = Field(default_factory=BrokerConfig)
    api: ApiConfig = Field(default_factory=ApiConfig)
    fetch: FetchConfig = Field(default_factory=FetchConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    feedback: FeedbackConfig = Field(default_factory=FeedbackConfig)
    federated: FederatedConfig = Field(default_factory=FederatedConfig)
    drift: DriftConfig = Field(default_factory=DriftConfig)
    telemetry_interval_s: float | None = Field(
        default=None, gt=0, description="Seconds between telemetry messages; default from the device class."
    )
    thermal_zones: str = Field(
        default="/sys/class/thermal/thermal_zone*",
        description="Glob of the kernel's thermal zones; the hottest is held against the device class's [thermal].",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("device_id")
    @classmethod
    def _check_device_id(cls, value: str) -> str:
        return validate_device_id(value)

    @property
    def socket_path(self) -> Path:
        return self.api.socket or self.data_dir / "agent.sock"


def load_config(path: Path) -> AgentConfig:
    """Read and validate a TOML config; relative paths are taken from the file's folder."""
    return load_toml_model(AgentConfig, path)


def parse_config(raw: dict[str, Any], *, source: str, base: Path) -> AgentConfig:
    return parse_model(AgentConfig, raw, source=source, base=base)
