"""One validated config per device class (TOML files beside this module), shipped with the agent."""

from __future__ import annotations

from pathlib import Path

__all__ = ["CONFIG_DIR", "shipped_classes"]

CONFIG_DIR = Path(__file__).resolve().parent


def shipped_classes() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.toml"))
