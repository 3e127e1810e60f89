"""The wire fields of SuperNode authentication: the key a device reports, the assignment's node_auth."""

from __future__ import annotations

import json

import pytest

from edgefleet.protocol.errors import InvalidMessage
from edgefleet.protocol.messages import CampaignAssignment, ReportedState, parse

PEM = "-----BEGIN PUBLIC KEY-----\nMHYwEAYHKoZIzj0CAQYFK4EEACIDYgAE\n-----END PUBLIC KEY-----\n"


def _reported(key: str | None) -> bytes:
    state = {"device_id": "a", "device_class": "rpi5", "agent_version": "t", "status": "idle",
             "started_at": "2026-11-01T00:00:00Z", "supernode_public_key": key}  # fmt: skip
    return json.dumps(state).encode()


def test_a_reported_key_is_a_bounded_pem_public_key() -> None:
    assert parse(ReportedState, _reported(PEM)).supernode_public_key == PEM
    assert parse(ReportedState, _reported(None)).supernode_public_key is None
    for bad in ("ssh-ed25519 AAAA", PEM.replace("PUBLIC", "PRIVATE"), PEM.replace("MHYw", "MHYw" + "A" * 1024)):
        with pytest.raises(InvalidMessage, match="supernode_public_key"):
            parse(ReportedState, _reported(bad))


def test_node_auth_needs_tls() -> None:
    with pytest.raises(ValueError, match="root_certificate"):
        CampaignAssignment(device_id="a", campaign_id="c1", superlink="127.0.0.1:9092", node_auth=True)
    assignment = CampaignAssignment(
        device_id="a", campaign_id="c1", superlink="h:1", root_certificate="x", node_auth=True
    )
    assert parse(CampaignAssignment, assignment.to_bytes()).node_auth
    assert not parse(CampaignAssignment, CampaignAssignment(device_id="a").to_bytes()).node_auth
