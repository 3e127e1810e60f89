"""The coordinator's exception types; the REST API maps them to HTTP statuses."""

from __future__ import annotations

__all__ = ["Conflict", "CoordinatorError", "NotFound", "Rejected"]


class CoordinatorError(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class NotFound(CoordinatorError):
    """An unknown bundle or device."""


class Rejected(CoordinatorError):
    """Input that is invalid: a tampered or untrusted bundle, a bad archive."""


class Conflict(CoordinatorError):
    """A valid request that does not fit the current state (e.g. a bundle for another device class)."""
