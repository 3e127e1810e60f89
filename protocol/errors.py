"""Errors raised by the wire contract: each carries the reason a peer would log or report."""

from __future__ import annotations

from edgefleet.common.errors import EdgefleetError
from edgefleet.common.settings import describe_errors

__all__ = ["BundleError", "InvalidMessage", "ProtocolError", "SignatureError", "UnsafeArchive", "describe_errors"]


class ProtocolError(EdgefleetError, ValueError):
    """Base class: something received or read does not satisfy the contract."""

    def __init__(self, reason: str, *, topic: str | None = None) -> None:
        super().__init__(reason)
        self.topic = topic


class InvalidMessage(ProtocolError):
    """A payload that is malformed, oversized, of an unknown schema or for the wrong device."""


class BundleError(ProtocolError):
    """A bundle whose files do not match its manifest, or whose manifest is invalid."""


class SignatureError(BundleError):
    """A manifest whose signature is missing, invalid, or made by a key that is not trusted."""


class UnsafeArchive(BundleError):
    """A bundle archive that would escape its directory, holds links, or exceeds the size limits."""
