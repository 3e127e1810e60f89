"""The coordinator's typed configuration (TOML)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from edgefleet.common.mqtt import BrokerConfig
from edgefleet.common.settings import load_toml_model
from edgefleet.coordinator.health.signals import DEFAULT_MAX_P95_RATIO

__all__ = [
    "ApiServerConfig",
    "BrokerAuthConfig",
    "CampaignsConfig",
    "CoordinatorConfig",
    "EnrollmentConfig",
    "StoreConfig",
    "TelemetryRetentionConfig",
    "load_config",
]


class ApiServerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = Field(default="127.0.0.1", description="Address the REST API listens on.")
    port: int = Field(default=8080, ge=0, le=65535, description="REST API port.")
    token: str | None = Field(default=None, min_length=16, description="Bearer token the API requires.")
    token_file: Path | None = Field(default=None, description="File holding the bearer token.")
    public_artifacts: bool = Field(
        default=False,
        title="Public artifact downloads",
        description="Serve GET /api/v1/artifacts/{manifest|file}/{digest} without a token, so devices can use "
        "the API as an HTTP mirror with no API token of their own. Devices verify every byte by hash and "
        "signature, so this cannot make them run anything unsigned; but anyone who reaches the API can then "
        "download any bundle (its model weights) whose digest they know, and use the bandwidth. Leave it off "
        "where models are confidential and give devices a read-only token instead.",
    )

    metrics_access: Literal["token", "token_or_loopback", "public"] = Field(
        default="token_or_loopback",
        description="Who may read GET /metrics: token (a read-only token or higher), token_or_loopback (also any "
        "client on 127.0.0.1/::1, e.g. a Prometheus on this host; behind a reverse proxy on this host every "
        "client looks local: choose token there) or public. The figures name devices, versions and alerts.",
    )

    def resolved_token(self) -> str | None:
        return self.token_file.read_text().strip() if self.token_file else self.token


class BrokerAuthConfig(BaseModel):
    """Mosquitto's password and ACL files, which the coordinator then owns and rewrites whole.

    Mosquitto reads them as its own user: create both once with group ``mosquitto`` and mode 0640;
    rewrites keep the mode and group a file has (a file the coordinator creates gets 0640).
    """

    model_config = ConfigDict(extra="forbid")

    password_file: Path = Field(description="Mosquitto `password_file`; rewritten on every enrollment and revocation.")
    acl_file: Path = Field(description="Mosquitto `acl_file`; each device may use only its own topic subtree.")
    reload_command: list[str] | None = Field(
        default=None,
        description="Command (argv, no shell) that makes the broker re-read both files, e.g. "
        '["systemctl", "reload", "mosquitto"] or ["kill", "-HUP", "1234"]. Without it the files are '
        "written and the broker must be reloaded by other means.",
    )
    reload_timeout_s: float = Field(default=10.0, gt=0, description="Longest wait for the reload command.")
    mosquitto_passwd: str = Field(
        default="mosquitto_passwd",
        description="The tool that hashes passwords; if it is missing, the same PBKDF2-SHA512 format is "
        "written directly.",
    )


class EnrollmentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    broker_url: str | None = Field(
        default=None, description="Broker URL handed to enrolled devices; default: the coordinator's [broker] url."
    )
    broker_ca_file: Path | None = Field(
        default=None, description="CA certificate (PEM) handed to devices to verify the broker's TLS certificate."
    )
    max_token_ttl_s: float = Field(
        default=7 * 86400, gt=0, le=365 * 86400, description="Longest lifetime of an enrollment token, in seconds."
    )

    @field_validator("broker_url")
    @classmethod
    def _check_url(cls, url: str | None) -> str | None:
        return None if url is None else BrokerConfig(url=url).url


class StoreConfig(BaseModel):
    """Where the fleet store lives: by default the SQLite file ``fleet.db`` in ``data_dir``."""

    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(
        default=None,
        title="PostgreSQL URL",
        description="postgresql://user@host:5432/dbname: keep the fleet in this PostgreSQL database instead "
        "(needs the postgres extra); several coordinators may share it. A password may be in the URL, or in "
        "PGPASSWORD or ~/.pgpass as libpq reads them.",
    )
    connect_timeout_s: float = Field(
        default=10, gt=0, le=600, description="Seconds to wait for the database server at start-up."
    )

    @field_validator("url")
    @classmethod
    def _check_url(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith(("postgresql://", "postgres://")):
            raise ValueError("must be a postgresql:// URL (leave it out for the SQLite file in data_dir)")
        return url


class TelemetryRetentionConfig(BaseModel):
    """How long telemetry is kept: raw reports briefly, minute and hour rollups for longer."""

    model_config = ConfigDict(extra="forbid")

    raw_days: float = Field(
        default=7, gt=0, le=36500, title="Raw telemetry", description="Days raw reports are kept after arrival."
    )
    minute_days: float = Field(
        default=30, gt=0, le=36500, title="Minute rollups", description="Days per-minute rollups are kept."
    )
    hour_days: float = Field(
        default=365, gt=0, le=36500, title="Hour rollups", description="Days per-hour rollups are kept."
    )
    prune_interval_s: float = Field(
        default=3600,
        gt=0,
        le=7 * 86400,
        title="Prune interval",
        description="Seconds between two prunes of what is past retention (the first runs at start-up).",
    )


class CampaignsConfig(BaseModel):
    """Federated campaigns (needs the federated extra: flwr, opacus, torch)."""

    model_config = ConfigDict(extra="forbid")

    signing_key: Path | None = Field(
        default=None,
        description="PEM ed25519 private key that signs the model versions campaigns produce; its public key "
        "must be among trusted_keys (and the devices' trusted keys).",
    )
    architectures: list[str] = Field(
        default_factory=list,
        max_length=100,
        description="Import paths (pkg.module:factory) a campaign spec may name as its architecture, besides the "
        "built-in ones and installed edgefleet.architectures entry points. Nothing else a spec names is imported.",
    )
    engine: Literal["deployment", "none"] = Field(
        default="deployment",
        description="deployment: a Flower SuperLink per campaign and a SuperNode on each device; none: no campaigns.",
    )
    superlink_bind_host: str = Field(default="127.0.0.1", description="Address the campaign SuperLinks listen on.")
    superlink_advertise_host: str | None = Field(
        default=None, description="Address devices reach the SuperLinks at; default: the bind address."
    )
    superlink_certfile: Path | None = Field(
        default=None,
        description="TLS certificate (PEM) of the SuperLinks. With TLS they also authenticate SuperNodes: only "
        "the keys the selected devices reported are registered, and devices that reported none are skipped.",
    )
    superlink_keyfile: Path | None = Field(default=None, description="Its private key (PEM).")
    superlink_ca_file: Path | None = Field(
        default=None, description="CA (PEM) that signed it; handed to devices, which then refuse any other SuperLink."
    )

    @model_validator(mode="after")
    def _tls_complete(self) -> CampaignsConfig:
        given = [self.superlink_certfile, self.superlink_keyfile, self.superlink_ca_file]
        if any(given) and not all(given):
            raise ValueError("superlink TLS needs all of superlink_certfile, superlink_keyfile and superlink_ca_file")
        return self


_YEAR_S = 365 * 86400.0  # bounds the windows so that "now - window" stays a valid date


class AlertThresholds(BaseModel):
    """When a device's state or telemetry becomes an alert (coordinator/health/alerts.py)."""

    model_config = ConfigDict(extra="forbid")

    offline_after_s: float = Field(
        default=300.0, gt=0, le=_YEAR_S, title="Staleness", description="An online device silent for longer is offline."
    )
    window_s: float = Field(
        default=900.0,
        gt=0,
        le=_YEAR_S,
        title="Recent window",
        description="Seconds of telemetry the error rate is taken over.",
    )
    max_error_rate: float = Field(
        default=0.05, ge=0, le=1, title="Error rate", description="Errors / (inferences + errors) in the window."
    )
    min_requests: int = Field(
        default=20, ge=1, title="Minimum requests", description="Fewer requests in the window raise no error alert."
    )
    max_p95_latency_ratio: float = Field(
        default=DEFAULT_MAX_P95_RATIO, gt=0, title="Latency ratio",
        description="Active bundle's p95 / previous bundle's p95 (medians of their newest windows).",
    )  # fmt: skip
    max_disk_used_percent: float = Field(
        default=90.0,
        ge=0,
        le=100,
        title="Disk usage",
        description="Used percent of the agent's data filesystem, in its latest report, above which the disk is full.",
    )


class CoordinatorConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data_dir: Path = Field(description="SQLite database (unless [store] names another) and the blob store.")
    store: StoreConfig = Field(default_factory=StoreConfig, description="The fleet store's database.")
    trusted_keys: list[Path] = Field(min_length=1, description="PEM public keys whose bundles are accepted.")
    broker: BrokerConfig = Field(default_factory=BrokerConfig)
    api: ApiServerConfig = Field(default_factory=ApiServerConfig)
    client_id: str = Field(
        default="edgefleet-coordinator", description="MQTT client id (each replica of one store needs its own)."
    )
    replica_group: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9_.-]{1,64}$",
        description="Coordinators of one PostgreSQL store that share the work: each device report and chunk "
        "request goes to one of them (MQTT shared subscriptions, $share/<group>/...; Mosquitto 2 has them). "
        "The same value on every replica; leave it out for one coordinator.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    broker_auth: BrokerAuthConfig | None = Field(
        default=None,
        description="Maintain the broker's password and ACL files; without it, device broker auth is unmanaged.",
    )
    enrollment: EnrollmentConfig = Field(default_factory=EnrollmentConfig)
    command_key: Path | None = Field(
        default=None,
        description="PEM ed25519 private key that signs commands, desired states and campaign assignments to "
        "devices (not the bundle key); its public key is handed out at enrollment.",
    )
    control_ttl_s: float = Field(
        default=7 * 86_400.0,
        ge=3_600.0,
        le=90 * 86_400.0,
        description="How long a signed desired state or campaign assignment stays valid; the leading coordinator "
        "signs each desired state again after a quarter of it, so a device never holds an expired one.",
    )
    retention: TelemetryRetentionConfig = Field(
        default_factory=TelemetryRetentionConfig,
        description="How long raw telemetry and its minute and hour rollups are kept.",
    )
    campaigns: CampaignsConfig = Field(default_factory=CampaignsConfig, description="Federated campaigns.")
    alerts: AlertThresholds = Field(
        default_factory=AlertThresholds,
        description="When device state and telemetry become alerts, in the API, the dashboard and /metrics; "
        "the alerts endpoint's query parameters override them per request.",
    )

    @model_validator(mode="after")
    def _replicas_share_a_database(self) -> CoordinatorConfig:
        if self.replica_group is not None and self.store.url is None:
            raise ValueError("replica_group needs [store] url: replicas share one PostgreSQL store, not a SQLite file")
        return self

    @model_validator(mode="after")
    def _coordinator_has_broker_credentials(self) -> CoordinatorConfig:
        if self.broker_auth is not None and not (
            self.broker.username and (self.broker.password or self.broker.password_file)
        ):
            raise ValueError(
                "broker_auth needs [broker] username and password (or password_file): "
                "the coordinator writes its own broker user from them"
            )
        return self


def load_config(path: Path) -> CoordinatorConfig:
    """Read and validate a TOML config; relative paths are taken from the file's folder.

    Errors leave the offending values out: this file holds tokens and passwords.
    """
    return load_toml_model(CoordinatorConfig, path, values=False)
