"""Everything edgefleet takes from Flower beyond its documented API, in one place.

Written against flwr 1.40 (pyproject pins ``flwr>=1.40,<1.41``); tests/test_flower_compat.py checks
each piece against the installed Flower, so an upgrade that moves one fails there, by name, rather
than deep inside a campaign. Flower is imported only when a function here is called.

- the in-process Grid (federated/inprocess.py) sets a message's id, the task identity and an empty
  Run the way Flower's own InMemoryGrid does;
- campaign deployment (federated/server/deployment.py, common/flower_processes.py) builds a FAB and
  speaks the SuperLink's Control API with Flower's own client and request types;
- secure aggregation (federated/secure_aggregation.py) drives Flower's SecAgg+ workflow, which exists
  only on the legacy API.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flwr.app import Message
    from flwr.supercore.control import ControlHttpClient
    from flwr.supercore.run import Run

__all__ = [
    "FLOWER_SERIES",
    "build_fab",
    "control_client",
    "control_requests",
    "empty_run",
    "fab_proto",
    "secaggplus",
    "set_message_id",
    "set_task_identity",
    "superlink_node_id",
    "unavailable_error_codes",
    "user_config_proto",
]

FLOWER_SERIES = "1.40"  # the minor release these internals were read from


def unavailable_error_codes() -> frozenset[int]:
    """The error codes of a reply Flower makes up for a node that never answered (dead, gone, crashed):
    no device decided anything there."""
    from flwr.common.constant import ErrorCode

    return frozenset({
        ErrorCode.MESSAGE_UNAVAILABLE, ErrorCode.REPLY_MESSAGE_UNAVAILABLE, ErrorCode.NODE_UNAVAILABLE,
        ErrorCode.CLIENT_APP_CRASHED,
    })  # fmt: skip


def set_message_id(message: Message, message_id: str) -> None:
    """Give a message the id the SuperLink would (Metadata exposes it read-only)."""
    message.metadata.__dict__["_message_id"] = message_id


def set_task_identity(run_id: int, node_id: int, task_id: int = 0) -> None:
    """Who is running, as Flower's own code reads it (a process-wide TaskIdentity)."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = run_id, node_id, task_id


def empty_run(run_id: int) -> Run:
    from flwr.supercore.run import Run

    return Run.create_empty(run_id)


def superlink_node_id() -> int:
    """The node id messages from the server side carry as their source."""
    from flwr.common.constant import SUPERLINK_NODE_ID

    return int(SUPERLINK_NODE_ID)


def client_app_error_code() -> int:
    """The error code of a reply whose ClientApp raised."""
    from flwr.common.constant import ErrorCode

    return int(ErrorCode.CLIENT_APP_RAISED_EXCEPTION)


def build_fab(app_dir: Path) -> tuple[dict[str, Any], bytes, list[str], list[str]]:
    """A Flower App's config, FAB bytes and its validation errors and warnings, as `flwr run` builds them."""
    import tomllib

    from flwr.cli.build import build_fab_from_disk
    from flwr.common.config import validate_fields_in_config

    config = tomllib.loads((app_dir / "pyproject.toml").read_text(encoding="utf-8"))
    valid, errors, warnings = validate_fields_in_config(config)
    if not valid or errors:
        return config, b"", list(errors) or ["invalid"], list(warnings)
    return config, build_fab_from_disk(app_dir), [], list(warnings)


def fab_identity(config: dict[str, Any]) -> str:
    """``publisher/name==version`` of a Flower App's config."""
    from flwr.common.config import get_metadata_from_config

    fab_id, fab_version = get_metadata_from_config(config)
    return f"{fab_id}=={fab_version}"


def fab_proto(fab_hash: str, fab_bytes: bytes) -> Any:
    from flwr.common.serde import fab_to_proto
    from flwr.supercore.fab import Fab

    return fab_to_proto(Fab(fab_hash, fab_bytes, {}))


def user_config_proto(config: dict[str, Any]) -> Any:
    from flwr.common.serde import user_config_to_proto

    return user_config_to_proto(config)


def control_requests() -> Any:
    """Flower's Control API request messages (ListRuns, StartRun, StopRun, StreamLogs, RegisterNode, ListNodes)."""
    from flwr.proto import control_pb2

    return control_pb2


def control_client(control_address: str, root_certificates: bytes | None = None) -> ControlHttpClient:
    """Flower's own client of a SuperLink's Control API (HTTP in flwr 1.40)."""
    from flwr.supercore.control import ControlHttpClient

    return ControlHttpClient.from_server_address(
        control_address, insecure=root_certificates is None, root_certificates=root_certificates, interceptors=[]
    )


def secaggplus() -> Any:
    """The legacy-API pieces of Flower's SecAgg+ workflow, as one namespace."""
    from types import SimpleNamespace

    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
    from flwr.server.compat.legacy_context import LegacyContext
    from flwr.server.workflow import SecAggPlusWorkflow
    from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
    from flwr.server.workflow.constant import Key as WorkflowKey

    return SimpleNamespace(
        RECORD_KEY_CONFIGS=RECORD_KEY_CONFIGS, LegacyContext=LegacyContext, SecAggPlusWorkflow=SecAggPlusWorkflow,
        MAIN_CONFIGS_RECORD=MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD=MAIN_PARAMS_RECORD, WorkflowKey=WorkflowKey,
    )  # fmt: skip
