"""The fleet store: one interface (base.py), its SQLite backend, the numbered migrations."""

from __future__ import annotations

from pathlib import Path

from edgefleet.coordinator.store.base import FleetStore

__all__ = ["FleetStore", "open_store"]


def open_store(path: Path | str) -> FleetStore:
    """The store in the SQLite file ``path`` (created and migrated as needed)."""
    from edgefleet.coordinator.store.sqlite import SQLiteStore

    return SQLiteStore(path)
