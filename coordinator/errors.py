"""The coordinator's exception types; the REST API maps them to HTTP statuses."""

from __future__ import annotations

from edgefleet.common.errors import EdgefleetError

__all__ = ["Conflict", "CoordinatorError", "NotFound", "Rejected", "StoreError", "StoreUnavailable"]


class CoordinatorError(EdgefleetError):
    """Base class of the coordinator's errors."""


class NotFound(CoordinatorError):
    """An unknown bundle or device."""


class Rejected(CoordinatorError):
    """Input that is invalid: a tampered or untrusted bundle, a bad archive."""


class Conflict(CoordinatorError):
    """A valid request that does not fit the current state (e.g. a bundle for another device class)."""


class StoreError(CoordinatorError):
    """The fleet store cannot be used as configured (e.g. its schema is newer than this coordinator)."""


class StoreUnavailable(StoreError):
    """The fleet store's database server does not answer, or refuses the connection."""
