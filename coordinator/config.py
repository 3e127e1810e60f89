"""The coordinator's typed configuration (TOML)."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent.config import BrokerConfig
from coordinator.errors import Rejected

__all__ = ["ApiServerConfig", "CoordinatorConfig", "load_config"]


class ApiServerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = Field(default="127.0.0.1", description="Address the REST API listens on.")
    port: int = Field(default=8080, ge=0, le=65535, description="REST API port.")
    token: str | None = Field(default=None, min_length=16, description="Bearer token the API requires.")
    token_file: Path | None = Field(default=None, description="File holding the bearer token.")

    def resolved_token(self) -> str | None:
        return self.token_file.read_text().strip() if self.token_file else self.token


class CoordinatorConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data_dir: Path = Field(description="SQLite database and the blob store.")
    trusted_keys: list[Path] = Field(min_length=1, description="PEM public keys whose bundles are accepted.")
    broker: BrokerConfig = Field(default_factory=BrokerConfig)
    api: ApiServerConfig = Field(default_factory=ApiServerConfig)
    client_id: str = Field(default="edgefleet-coordinator", description="MQTT client id.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


def load_config(path: Path) -> CoordinatorConfig:
    try:
        raw: dict[str, Any] = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise Rejected(f"{path}: cannot read config: {exc}") from None
    try:
        config = CoordinatorConfig.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "(root)"
            problems.append(f"{loc}: {err['msg']}")
        raise Rejected(f"{path}: " + "; ".join(problems)) from None
    base = Path(path).resolve().parent

    def absolute(p: Path | None) -> Path | None:
        return None if p is None or p.is_absolute() else base / p

    return config.model_copy(
        update={
            "data_dir": absolute(config.data_dir) or config.data_dir,
            "trusted_keys": [absolute(p) or p for p in config.trusted_keys],
            "api": config.api.model_copy(
                update={"token_file": absolute(config.api.token_file) or config.api.token_file}
            ),
            "broker": config.broker.model_copy(
                update={"password_file": absolute(config.broker.password_file) or config.broker.password_file}
            ),
        }
    )
