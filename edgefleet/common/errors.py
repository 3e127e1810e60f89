"""The root of every error edgefleet raises on purpose, and the errors every layer shares.

Each package derives its own narrow types from ``EdgefleetError`` (``ProtocolError``, ``AgentError``,
``CompressionError``, ``FederatedError``, ``CoordinatorError``); the REST API maps them to HTTP
statuses by class (edgefleet.coordinator.api.app) and the CLI to exit codes by one table
(edgefleet.cli.errors). Every one carries ``reason``: the sentence a user can act on.
"""

from __future__ import annotations

__all__ = ["ConfigError", "EdgefleetError"]


class EdgefleetError(Exception):
    """Base class of edgefleet's errors, with the reason a user can act on."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ConfigError(EdgefleetError):
    """A config file that cannot be read or does not validate; ``problems`` lists each finding."""

    def __init__(self, path: str, problems: list[str]) -> None:
        super().__init__(f"{path}: " + "; ".join(problems))
        self.path = path
        self.problems = problems
