"""The agent's typed configuration (TOML), which forbids unknown keys and explains every error."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from edgefleet.agent.errors import ConfigError
from edgefleet.protocol.errors import describe_errors
from edgefleet.protocol.topics import validate_device_id

__all__ = ["AgentConfig", "ApiConfig", "BrokerConfig", "FeedbackConfig", "FetchConfig", "StoreConfig", "load_config"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BrokerConfig(_Strict):
    url: str = Field(
        default="mqtt://127.0.0.1:1883",
        title="Broker URL",
        description="mqtt://host:port, or mqtts://host:port for TLS.",
    )
    username: str | None = Field(default=None, description="Broker user name; by convention the device id.")
    password: str | None = Field(default=None, description="Broker password (prefer password_file).")
    password_file: Path | None = Field(default=None, description="File holding the broker password.")
    ca_file: Path | None = Field(default=None, description="CA bundle to verify the broker's TLS certificate.")
    keepalive_s: int = Field(default=30, ge=5, le=3600, description="MQTT keepalive interval.")

    @field_validator("url")
    @classmethod
    def _check_url(cls, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ValueError("expected mqtt://host:port or mqtts://host:port")
        return url

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        return parts.port or (8883 if parts.scheme == "mqtts" else 1883)

    @property
    def tls(self) -> bool:
        return urlsplit(self.url).scheme == "mqtts"

    def resolved_password(self) -> str | None:
        if self.password_file is not None:
            return self.password_file.read_text().strip()
        return self.password


class ApiConfig(_Strict):
    socket: Path | None = Field(
        default=None, description="Unix socket of the local gRPC API; default <data_dir>/agent.sock."
    )
    tcp_port: int | None = Field(
        default=None, ge=0, le=65535, description="Also listen on 127.0.0.1:PORT (0 picks a free port)."
    )
    max_message_bytes: int = Field(default=16 * 1024 * 1024, ge=1024, description="Largest gRPC message.")
    workers: int = Field(default=4, ge=1, le=64, description="Threads serving requests.")


class FetchConfig(_Strict):
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


class StoreConfig(_Strict):
    keep_bundles: int = Field(default=3, ge=2, le=100, description="Bundles kept on disk; older ones are deleted.")
    crash_loop_restarts: int = Field(
        default=3, ge=2, le=100, description="Unclean starts within the window that revert the last activation."
    )
    crash_loop_window_s: float = Field(default=300.0, gt=0, description="Window for counting unclean starts.")


class FeedbackConfig(_Strict):
    remember_requests: int = Field(default=1000, ge=0, description="Recent requests whose inputs are kept.")
    remember_s: float = Field(default=600.0, gt=0, description="How long a request can still get feedback.")
    max_mb: int = Field(default=256, ge=1, description="Largest size of the stored training samples.")
    max_age_days: float = Field(default=30.0, gt=0, description="Samples older than this are deleted.")


class FederatedConfig(_Strict):
    enabled: bool = Field(default=True, description="Take part in federated campaigns the coordinator assigns.")
    startup_timeout_s: float = Field(default=60.0, gt=0, description="Longest wait for the SuperNode to register.")
    max_restarts: int = Field(default=3, ge=0, description="Restarts of a SuperNode that died, per campaign.")


class DriftConfig(_Strict):
    threshold: float = Field(default=0.25, gt=0, description="Drift score (mean PSI) that raises an alert.")
    window: int = Field(default=500, ge=50, le=100_000, description="Recent rows compared with the reference.")


class AgentConfig(_Strict):
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
    try:
        raw = tomllib.loads(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(str(path), [f"cannot read: {exc.strerror}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), [f"not valid TOML: {exc}"]) from None
    return parse_config(raw, source=str(path), base=Path(path).resolve().parent)


def parse_config(raw: dict[str, Any], *, source: str, base: Path) -> AgentConfig:
    try:
        config = AgentConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(source, describe_errors(exc, values=True)) from None
    return _resolve_paths(config, base)


def _resolve_paths(config: AgentConfig, base: Path) -> AgentConfig:
    def absolute(p: Path | None) -> Path | None:
        return None if p is None else (p if p.is_absolute() else base / p)

    broker = config.broker.model_copy(
        update={
            "password_file": absolute(config.broker.password_file),
            "ca_file": absolute(config.broker.ca_file),
        }
    )
    api = config.api.model_copy(update={"socket": absolute(config.api.socket)})
    fetch = config.fetch.model_copy(
        update={
            "http_ca_file": absolute(config.fetch.http_ca_file),
            "http_token_file": absolute(config.fetch.http_token_file),
        }
    )
    return config.model_copy(
        update={
            "data_dir": absolute(config.data_dir),
            "device_class_dir": absolute(config.device_class_dir),
            "trusted_keys": [absolute(p) for p in config.trusted_keys],
            "command_keys": [absolute(p) for p in config.command_keys],
            "broker": broker,
            "api": api,
            "fetch": fetch,
        }
    )
