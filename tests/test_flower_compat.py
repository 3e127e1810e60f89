"""Every piece of Flower that edgefleet uses beyond its documented API (edgefleet.common.flower_compat),
checked against the installed Flower: an upgrade that moves one fails here, by name."""

from __future__ import annotations

import ast
import importlib.metadata
from pathlib import Path

import pytest

pytest.importorskip("flwr", reason="flwr (federated extra) not installed")

from flwr.app import Message, RecordDict

from edgefleet.common import flower_compat

ROOT = Path(__file__).resolve().parent.parent


def test_the_installed_flower_is_the_series_these_internals_were_read_from() -> None:
    installed = importlib.metadata.version("flwr")
    assert installed.startswith(flower_compat.FLOWER_SERIES + "."), (
        f"flwr {installed} installed, edgefleet.common.flower_compat was written against {flower_compat.FLOWER_SERIES}:"
        " check every function there against the new release, then move FLOWER_SERIES and pyproject's pin"
    )


def test_a_message_takes_the_id_it_is_given() -> None:
    flower_compat.set_task_identity(1, flower_compat.superlink_node_id())  # a Message reads who makes it
    message = Message(RecordDict(), dst_node_id=7, message_type="train")
    flower_compat.set_message_id(message, "abc123")
    assert message.metadata.message_id == "abc123"


def test_task_identity_run_and_node_ids() -> None:
    from flwr.supercore.task_identity import TaskIdentity

    server = flower_compat.superlink_node_id()
    flower_compat.set_task_identity(42, server, 3)
    assert (TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id) == (42, server, 3)
    assert flower_compat.empty_run(42).run_id == 42
    assert flower_compat.client_app_error_code() > 0


def test_the_campaign_app_builds_into_a_fab_with_its_identity() -> None:
    config, fab, errors, _warnings = flower_compat.build_fab(ROOT / "federated" / "flower_app")
    assert not errors and fab[:2] == b"PK"  # a zip archive
    assert flower_compat.fab_identity(config) == "edgefleet/edgefleet-campaign==0.1.0"
    proto = flower_compat.fab_proto("0" * 64, fab)
    assert proto.hash_str == "0" * 64 and proto.content == fab
    assert flower_compat.user_config_proto({"campaign-id": "c1"})["campaign-id"].string == "c1"


def test_the_control_api_speaks_the_requests_deployment_sends() -> None:
    requests = flower_compat.control_requests()
    for name in ("ListRunsRequest", "StartRunRequest", "StopRunRequest", "StreamLogsRequest", "RegisterNodeRequest",
                 "ListNodesRequest"):  # fmt: skip
        assert hasattr(requests, name), name
    assert requests.StreamLogsRequest(run_id=1, after_timestamp=0.0).run_id == 1
    assert requests.RegisterNodeRequest(public_key=b"k", name="n").name == "n"
    client = flower_compat.control_client("127.0.0.1:9")  # constructing connects to nothing
    assert hasattr(client, "StartRun") and hasattr(client, "ListNodes")


def test_the_secaggplus_workflow_pieces_are_there() -> None:
    secagg = flower_compat.secaggplus()
    assert isinstance(secagg.RECORD_KEY_CONFIGS, str) and secagg.WorkflowKey.CURRENT_ROUND
    assert callable(secagg.SecAggPlusWorkflow) and callable(secagg.LegacyContext)


def _runtime_imports(tree: ast.AST) -> list[tuple[int, str]]:
    """Modules imported outside ``if TYPE_CHECKING:`` blocks."""
    found: list[tuple[int, str]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.lineno, node.module))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def test_nothing_else_imports_flower_internals() -> None:
    """Flower's documented API (flwr.app, flwr.clientapp, flwr.serverapp, flwr.client.mod, flwr.common's
    records, the legacy strategy and client classes) is used directly; the rest only through flower_compat."""
    internal = ("flwr.supercore", "flwr.proto", "flwr.cli", "flwr.common.serde", "flwr.common.config",
                "flwr.common.constant", "flwr.server.workflow", "flwr.server.compat",
                "flwr.common.secure_aggregation")  # fmt: skip
    offenders = []
    for folder in ("agent", "coordinator", "compression", "federated", "edgefleet", "protocol"):
        for path in (ROOT / folder).rglob("*.py"):
            if path.name == "flower_compat.py" or "grpc_gen" in path.parts:
                continue
            for number, module in _runtime_imports(ast.parse(path.read_text())):
                if any(module == name or module.startswith(name + ".") for name in internal):
                    offenders.append(f"{path.relative_to(ROOT)}:{number}: {module}")
    assert not offenders, "\n".join(offenders)
