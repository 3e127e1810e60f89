"""The fleet store: one interface (base.py), its SQLite and PostgreSQL backends, the numbered migrations."""

from __future__ import annotations

from pathlib import Path

from edgefleet.coordinator.store.base import FleetStore

__all__ = ["FleetStore", "open_store"]


def open_store(where: Path | str, *, connect_timeout_s: float = 10) -> FleetStore:
    """The store in the PostgreSQL database of URL ``where`` (postgresql://...), or else in the SQLite file
    ``where``; created and migrated as needed. StoreUnavailable if the database server does not answer."""
    if isinstance(where, str) and where.startswith(("postgresql://", "postgres://")):
        from edgefleet.coordinator.store.postgres import open_postgres

        return open_postgres(where, connect_timeout_s=connect_timeout_s)
    from edgefleet.coordinator.store.sqlite import SQLiteStore

    return SQLiteStore(where)
