"""The coordinator on a PostgreSQL store, as a user configures it (`[store] url`): real processes, a real server."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgefleet.agent.serving.client import InferenceClient
from edgefleet.common.exit_codes import ExitCode
from edgefleet.local.fleet import LocalFleet, wait_until, write_toml
from edgefleet.protocol.signing import generate_keypair
from tests.conftest import DigitsModels, Keys, build

pytestmark = pytest.mark.slow


def test_a_rollout_and_its_telemetry_live_in_postgresql_and_outlast_the_coordinator(
    tmp_path: Path, fleet: LocalFleet, keys: Keys, digits: DigitsModels, postgres_url: str
) -> None:
    # Prepare: a coordinator whose store is PostgreSQL, one agent
    fleet.start_coordinator(store={"url": postgres_url})
    fleet.add_agent("gw-1")
    fleet.start_agent("gw-1")
    fleet.wait_registered(["gw-1"], timeout=30)
    bundle, digest = build(digits.v1, tmp_path / "v1.bundle", keys, version="1.0.0")
    # Execute: upload, deploy, serve, report
    fleet.upload(bundle)
    fleet.deploy(digest)
    fleet.wait_active(digest, ["gw-1"])
    with InferenceClient(fleet.agents["gw-1"].target) as client:
        client.predict({"pixels": digits.x_test[:8]})
    wait_until(lambda: any(r["inference_count"] for r in fleet.get("/api/v1/devices/gw-1/telemetry")),
               timeout=30, what="telemetry with inferences in PostgreSQL")  # fmt: skip
    # Assert: nothing of it is in a SQLite file, and a new coordinator process finds all of it
    assert not (tmp_path / "coordinator" / "data" / "fleet.db").exists()
    assert fleet.coordinator is not None
    fleet.coordinator.send_signal(signal.SIGTERM)
    fleet.coordinator.wait(timeout=30)
    fleet.start_coordinator(store={"url": postgres_url})
    device = fleet.device("gw-1")
    assert device is not None and device["active_digest"] == digest and device["desired"]["revision"] == 1
    assert fleet.get(f"/api/v1/bundles/{digest}")["version"] == "1.0.0"
    assert any(r["inference_count"] for r in fleet.get("/api/v1/devices/gw-1/telemetry"))
    assert sum(b["inference_count"] for b in fleet.get("/api/v1/telemetry/rollups")) >= 1  # one request
    with InferenceClient(fleet.agents["gw-1"].target) as client:
        assert np.asarray(client.predict({"pixels": digits.x_test[:1]}).outputs["logits"]).shape == (1, 10)


@pytest.mark.parametrize(
    ("url", "code", "said"),
    [
        ("postgresql://fleet:hunter2@127.0.0.1:1/fleet", ExitCode.UNREACHABLE, "does not answer"),
        ("mysql://fleet@127.0.0.1/fleet", ExitCode.CONFIG_INVALID, "must be a postgresql:// URL"),
    ],
)
def test_serve_with_a_store_it_cannot_use_exits_with_the_reason_and_no_traceback(
    tmp_path: Path, url: str, code: int, said: str
) -> None:
    (tmp_path / "k.pub").write_bytes(generate_keypair()[1])
    config = write_toml(tmp_path / "coordinator.toml", {
        "data_dir": str(tmp_path / "data"), "trusted_keys": [str(tmp_path / "k.pub")],
        "store": {"url": url, "connect_timeout_s": 2},
    })  # fmt: skip
    result = subprocess.run([sys.executable, "-m", "edgefleet", "coordinator", "serve", "--config", str(config)],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == code, result.stderr
    assert said in " ".join(result.stderr.split()) and "Traceback" not in result.stderr
    assert "hunter2" not in result.stderr + result.stdout
