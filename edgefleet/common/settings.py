"""Typed configuration files: a strict model base, TOML reading, and one rule for relative paths.

A config is a pydantic model that forbids unknown keys; a file is read with ``load_toml_model``,
which says what is wrong key by key (``ConfigError.problems``) and takes every relative path in
it (any ``Path`` field, at any depth, in lists too) from the file's folder.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from edgefleet.common.errors import ConfigError

__all__ = ["StrictModel", "describe_errors", "load_toml", "load_toml_model", "parse_model", "resolve_paths"]

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    """A config section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


def describe_errors(exc: ValidationError, *, values: bool = False) -> list[str]:
    """One line per validation error: the key path, optionally the offending value, and the reason."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ())) or "(root)"
        value = err.get("input")
        shown = f" (value {value!r})" if values and not isinstance(value, dict) else ""
        lines.append(f"{loc}{shown}: {err.get('msg')}")
    return lines


def load_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(str(path), [f"cannot read: {exc.strerror}"]) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), [f"not valid TOML: {exc}"]) from None


def parse_model(model: type[M], raw: dict[str, Any], *, source: str, base: Path, values: bool = True) -> M:
    """Validate ``raw`` as ``model``; relative paths in it are taken from ``base``."""
    try:
        config = model.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(source, describe_errors(exc, values=values)) from None
    return resolve_paths(config, base)


def load_toml_model(model: type[M], path: Path, *, values: bool = True) -> M:
    return parse_model(model, load_toml(path), source=str(path), base=Path(path).resolve().parent, values=values)


def resolve_paths(config: M, base: Path) -> M:
    """A copy of ``config`` whose relative ``Path`` values (nested models and lists included) start at ``base``."""

    def absolute(value: Any) -> Any:
        if isinstance(value, Path):
            return value if value.is_absolute() else base / value
        if isinstance(value, BaseModel):
            return resolve_paths(value, base)
        if isinstance(value, list):
            return [absolute(v) for v in value]
        return value

    update = {name: absolute(getattr(config, name)) for name in type(config).model_fields}
    return config.model_copy(update=update)
