"""One error root: the REST API maps errors to statuses and the CLI to exit codes by class, most
specific first, so a new narrow error inherits the right answer from its parent."""

from __future__ import annotations

import pytest

from edgefleet.agent.errors import AgentError, FetchError
from edgefleet.cli.errors import exit_code
from edgefleet.common.errors import ConfigError, EdgefleetError
from edgefleet.common.exit_codes import ExitCode
from edgefleet.common.flower_processes import DeploymentError
from edgefleet.compression.errors import CompressionError, DataError
from edgefleet.coordinator.api.app import http_status
from edgefleet.coordinator.errors import Conflict, CoordinatorError, NotFound, Rejected
from edgefleet.coordinator.security.enrollment import EnrollmentRefused
from edgefleet.federated.errors import BudgetExhausted, FederatedError
from edgefleet.protocol.errors import InvalidMessage, ProtocolError, SignatureError, UnsafeArchive


def test_every_package_error_derives_from_the_one_root() -> None:
    for cls in (ProtocolError, AgentError, CompressionError, FederatedError, CoordinatorError, ConfigError,
                DeploymentError):  # fmt: skip
        assert issubclass(cls, EdgefleetError), cls
    assert issubclass(ProtocolError, ValueError)  # kept: code that validated input catches ValueError
    assert BudgetExhausted("over", spent=1, projected=2, max_epsilon=1.5).reason == "over"


class NoSuchCampaign(NotFound):
    """A narrow error a future module might add."""


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (NotFound("x"), 404), (NoSuchCampaign("x"), 404), (Rejected("x"), 422), (Conflict("x"), 409),
        (EnrollmentRefused("x"), 401), (InvalidMessage("x"), 422), (SignatureError("x"), 422),
        (ConfigError("f", ["bad"]), 422), (FederatedError("x"), 400), (CoordinatorError("x"), 400),
    ],
)  # fmt: skip
def test_the_api_maps_errors_by_their_class_hierarchy(error: EdgefleetError, status: int) -> None:
    assert http_status(error) == status


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (ConfigError("f", ["bad"]), ExitCode.CONFIG_INVALID), (SignatureError("x"), ExitCode.BUNDLE_INVALID),
        (UnsafeArchive("x"), ExitCode.BUNDLE_INVALID), (DataError("x"), ExitCode.USAGE),
        (FileNotFoundError("x"), ExitCode.NOT_FOUND), (FetchError("x"), ExitCode.ERROR),
        (RuntimeError("x"), ExitCode.ERROR),
    ],
)  # fmt: skip
def test_the_cli_maps_errors_to_exit_codes_by_one_table(error: BaseException, code: ExitCode) -> None:
    assert exit_code(error) == code


def test_a_command_can_say_what_an_otherwise_unlisted_error_means() -> None:
    assert exit_code(Rejected("x"), otherwise=ExitCode.CONFIG_INVALID) == ExitCode.CONFIG_INVALID
    assert exit_code(SignatureError("x"), otherwise=ExitCode.CONFIG_INVALID) == ExitCode.BUNDLE_INVALID
