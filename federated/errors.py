"""The federated package's exception types."""

from __future__ import annotations

from edgefleet.common.errors import EdgefleetError

__all__ = ["BudgetExhausted", "CampaignError", "FederatedError", "LocalDataError"]


class FederatedError(EdgefleetError):
    """Base class, with the reason a user can act on."""


class CampaignError(FederatedError):
    """A campaign that cannot start or go on (bad spec, too few clients, no base model)."""


class LocalDataError(FederatedError):
    """A client's training samples are missing or do not fit the model."""


class BudgetExhausted(FederatedError):
    """The next round would take a client's cumulative epsilon past the campaign's maximum."""

    def __init__(self, reason: str, *, spent: float, projected: float, max_epsilon: float) -> None:
        super().__init__(reason)
        self.spent, self.projected, self.max_epsilon = spent, projected, max_epsilon
