"""The agent's exception types; the CLI and the gRPC API turn them into exit codes and statuses."""

from __future__ import annotations

__all__ = ["ActivationError", "AgentError", "ConfigError", "FetchError", "InputError"]


class AgentError(Exception):
    """Base class for errors the agent reports with a reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ConfigError(AgentError):
    """A config file that cannot be read or does not validate; ``problems`` lists each finding."""

    def __init__(self, path: str, problems: list[str]) -> None:
        super().__init__(f"{path}: " + "; ".join(problems))
        self.path = path
        self.problems = problems


class FetchError(AgentError):
    """An artifact could not be fetched (timeouts, coordinator errors); worth retrying later."""


class ActivationError(AgentError):
    """A bundle was fetched but could not be loaded or failed its test vectors."""


class InputError(AgentError):
    """An inference request whose tensors do not fit the model (names, dtypes, shapes)."""
