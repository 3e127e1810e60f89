"""Property-based test of the REST API from its own OpenAPI spec: no input makes the server fail."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis (dev extra) not installed")

from hypothesis import HealthCheck, settings  # noqa: E402

from edgefleet.common.mqtt import BrokerConfig  # noqa: E402
from edgefleet.coordinator.api.app import create_app  # noqa: E402
from edgefleet.coordinator.config import CoordinatorConfig  # noqa: E402
from edgefleet.coordinator.service import Coordinator  # noqa: E402
from edgefleet.protocol.signing import generate_keypair  # noqa: E402

TOKEN = "schema-token-0123456789abcdef"


def _app():  # type: ignore[no-untyped-def]
    # No broker runs here: the coordinator's MQTT link is never started (no lifespan), and the
    # API must still answer every request without a server error.
    folder = Path(tempfile.mkdtemp(prefix="edgefleet-schema-"))
    (folder / "k.pub").write_bytes(generate_keypair()[1])
    config = CoordinatorConfig(data_dir=folder / "c", trusted_keys=[folder / "k.pub"], broker=BrokerConfig())
    return create_app(Coordinator(config), token=TOKEN)


schema = schemathesis.openapi.from_asgi("/openapi.json", _app())


@schema.parametrize()
@settings(max_examples=15, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_no_request_makes_the_api_fail(case) -> None:  # type: ignore[no-untyped-def]
    response = case.call(headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code < 500, (
        f"{case.method} {case.formatted_path}: {response.status_code} {response.text[:300]}"
    )
    if response.status_code >= 400:
        assert "detail" in response.json(), "every error is a JSON body with a reason"
