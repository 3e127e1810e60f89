"""The agent's exception types; the CLI and the gRPC API turn them into exit codes and statuses."""

from __future__ import annotations

from edgefleet.common.errors import EdgefleetError

__all__ = ["ActivationError", "AgentError", "FetchError", "InputError"]


class AgentError(EdgefleetError):
    """Base class for errors the agent reports with a reason."""


class FetchError(AgentError):
    """An artifact could not be fetched (timeouts, coordinator errors); worth retrying later."""


class ActivationError(AgentError):
    """A bundle was fetched but could not be loaded or failed its test vectors."""


class InputError(AgentError):
    """An inference request whose tensors do not fit the model (names, dtypes, shapes)."""
