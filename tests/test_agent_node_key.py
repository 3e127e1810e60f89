"""The agent's SuperNode authentication key: made once in the data dir, private, reused, reported."""

from __future__ import annotations

import stat
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edgefleet.agent.config import AgentConfig
from edgefleet.agent.daemon import Agent
from edgefleet.agent.learning.node_key import NODE_KEY_FILE, load_or_create_node_key
from edgefleet.protocol.messages import ReportedState, parse
from tests.conftest import Keys


def _agent(data_dir: Path, keys: Keys, **settings: object) -> Agent:
    config = AgentConfig.model_validate(
        {"device_id": "gw-1", "device_class": "rpi5", "data_dir": data_dir, "trusted_keys": [keys.public]} | settings
    )
    return Agent(config)


def _reported(agent: Agent) -> ReportedState:
    try:  # through the wire format, as the coordinator receives it
        return parse(ReportedState, agent.reported_state().to_bytes())
    finally:
        agent.stop()


def test_the_agent_creates_its_supernode_key_once_keeps_it_private_and_reports_it(tmp_path: Path, keys: Keys) -> None:
    # Prepare
    data_dir = tmp_path / "data"
    # Execute: the agent starts, then starts again on the same data dir
    first = _reported(_agent(data_dir, keys))
    key_file = data_dir / NODE_KEY_FILE
    written = key_file.read_bytes(), key_file.stat().st_mtime_ns
    second = _reported(_agent(data_dir, keys))
    # Assert: one key, 0600, a P-384 key Flower's SuperNode loads; its public key reported both times
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert (key_file.read_bytes(), key_file.stat().st_mtime_ns) == written
    assert [p.name for p in data_dir.iterdir() if NODE_KEY_FILE in p.name] == [NODE_KEY_FILE]  # no temporary left
    private = serialization.load_ssh_private_key(written[0], password=None)  # what flower-supernode calls
    assert isinstance(private, ec.EllipticCurvePrivateKey) and isinstance(private.curve, ec.SECP384R1)
    public = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert first.supernode_public_key == second.supernode_public_key == public.decode()


def test_a_loose_mode_is_tightened_and_an_unreadable_key_replaced(tmp_path: Path) -> None:
    # Prepare
    original = load_or_create_node_key(tmp_path)
    original.path.chmod(0o644)
    # Execute
    reloaded = load_or_create_node_key(tmp_path)
    original.path.write_text("not a key")
    replaced = load_or_create_node_key(tmp_path)
    # Assert
    assert reloaded.public_pem == original.public_pem
    assert replaced.public_pem != original.public_pem
    assert stat.S_IMODE(original.path.stat().st_mode) == 0o600


def test_an_agent_without_federated_campaigns_reports_no_key(tmp_path: Path, keys: Keys) -> None:
    reported = _reported(_agent(tmp_path / "data", keys, federated={"enabled": False}))
    assert reported.supernode_public_key is None
    assert not (tmp_path / "data" / NODE_KEY_FILE).exists()
