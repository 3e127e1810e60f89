"""Flower's real deployment engine on loopback: a SuperLink, two SuperNodes and runs of a toy app."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from edgefleet.common.flower_processes import DeploymentError, SuperLinkProcess, SuperNodeProcess, format_node_config
from edgefleet.federated.server.deployment import submit_run

TOY_APP = Path(__file__).parent / "fixtures" / "flower_toy_app"
NODE_CONFIGS = [
    {"node-name": "alpha", "node-index": 0, "weight": 0.5},
    {"node-name": "beta's node", "node-index": 1, "weight": 1.5},
]

pytestmark = [
    pytest.mark.slow,
    # flwr 1.40's FAB builder still asks pathspec for the deprecated 'gitwildmatch' patterns.
    pytest.mark.filterwarnings("ignore:GitWildMatchPattern:DeprecationWarning"),
]


@dataclass
class Deployment:
    link: SuperLinkProcess
    nodes: list[SuperNodeProcess]


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """One SuperLink and two SuperNodes; every process group is gone afterwards, whatever happened."""
    workdir = tmp_path_factory.mktemp("flower")
    started: list[SuperLinkProcess | SuperNodeProcess] = []
    try:
        link = SuperLinkProcess(workdir / "superlink").start()
        started.append(link)
        nodes = []
        for config in NODE_CONFIGS:
            node = SuperNodeProcess(link.addresses.fleet, config, workdir / str(config["node-name"]).replace("'", ""))
            started.append(node)
            nodes.append(node.start())
        link.wait_for_nodes([node.node_id for node in nodes if node.node_id is not None])
        yield Deployment(link, nodes)
    finally:
        # Reverse order of start-up: nodes unregister while the SuperLink still listens.
        pgids = [proc.pid for proc in started if proc.pid is not None]
        for proc in reversed(started):
            proc.stop()
        assert not [pgid for pgid in pgids if _group_alive(pgid)], "Flower processes outlived the test"


@pytest.mark.timeout(240)
def test_run_reaches_every_node_with_its_node_config(deployment: Deployment, tmp_path: Path) -> None:
    # Prepare
    result_path = tmp_path / "received.json"

    # Execute
    result = submit_run(
        TOY_APP,
        deployment.link.addresses.control,
        {"result-path": str(result_path), "expected-nodes": len(deployment.nodes)},
        timeout_s=180,
    )

    # Assert
    assert result.succeeded, f"{result.status}:{result.sub_status} {result.details}\n{result.log}"
    received = json.loads(result_path.read_text())
    assert received["errors"] == {}
    by_node_id = received["received"]
    assert {int(node_id) for node_id in by_node_id} == {node.node_id for node in deployment.nodes}
    for node in deployment.nodes:
        reply = by_node_id[str(node.node_id)]
        assert reply["node-name"] == node.node_config["node-name"]
        assert reply["node-index"] == node.node_config["node-index"]
        assert reply["numpy-sum"] == 3.0  # numpy imported inside flwr-clientapp


@pytest.mark.timeout(240)
def test_failing_server_app_is_reported_as_failed(deployment: Deployment, tmp_path: Path) -> None:
    result = submit_run(
        TOY_APP,
        deployment.link.addresses.control,
        {"result-path": str(tmp_path / "unused.json"), "fail-on-purpose": True},
        timeout_s=180,
    )

    assert (result.status, result.sub_status) == ("finished", "failed")
    assert not result.succeeded
    assert "failing on purpose" in result.log + result.details


@pytest.mark.timeout(60)
def test_superlink_on_a_taken_port_fails_with_its_log(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        link = SuperLinkProcess(tmp_path / "superlink", port=taken.getsockname()[1], startup_timeout_s=30)
        try:
            with pytest.raises(DeploymentError) as caught:
                link.start()
        finally:
            link.stop()

    assert caught.value.component == "superlink"
    assert "address already in use" in caught.value.log_tail  # the SuperLink's own words


def test_node_config_is_quoted_for_flower() -> None:
    rendered = format_node_config({"name": "it's", "plain": "a b", "n": 3, "w": 0.25, "on": True})

    assert rendered == "name=\"it's\" plain='a b' n=3 w=0.25 on=true"
    with pytest.raises(ValueError):
        format_node_config({"bad key": 1})
    with pytest.raises(ValueError):
        format_node_config({"both": 'it\'s "quoted"'})
