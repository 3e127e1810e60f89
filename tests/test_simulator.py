"""`edgefleet simulate` against a real coordinator and Mosquitto: simulated devices a rollout converges."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edgefleet.local.fleet import LocalFleet, wait_until
from tests.conftest import DigitsModels, Keys, build

pytestmark = pytest.mark.slow


def test_a_rollout_converges_on_two_hundred_simulated_devices_and_a_sample_downloads_the_real_bundle(
    tmp_path: Path, fleet: LocalFleet, keys: Keys, digits: DigitsModels
) -> None:
    # Prepare: a coordinator, 200 simulated devices on its broker, a real bundle
    url = fleet.start_coordinator()
    simulator = subprocess.Popen(
        [sys.executable, "-m", "edgefleet", "simulate", "--devices", "200", "--broker", fleet.broker_url,
         "--coordinator", url, "--token", fleet.token, "--duration", "40", "--telemetry-interval", "2",
         "--download-fraction", "0.05", "--activation", "0.5", "--format", "json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    devices = [f"sim-{n:05d}" for n in range(200)]
    fleet.wait_registered(devices, timeout=60)
    bundle, digest = build(digits.v1, tmp_path / "v1.bundle", keys, version="1.0.0")
    fleet.upload(bundle)

    # Execute: a two-wave rollout to all of them
    created = fleet.http.post("/api/v1/rollouts", json={
        "model": "digits", "version": "1.0.0", "waves": ["10%", "100%"], "soak_s": 1,
        "gates": {"without_evidence": "continue", "evidence_wait_s": 0},
    })  # fmt: skip
    assert created.status_code == 201, created.text
    done = wait_until(lambda: (r := fleet.get(f"/api/v1/rollouts/{created.json()['id']}"))["status"] != "running"
                      and r, timeout=60, interval=0.5, what="the rollout to finish")  # fmt: skip
    out, err = simulator.communicate(timeout=120)

    # Assert: every device converged, the sample fetched and checked the real files, telemetry arrived
    assert done["status"] == "completed", done
    assert all(d["state"] == "active" for d in done["device_states"]) and len(done["device_states"]) == 200
    assert simulator.returncode == 0, err.decode()[-2000:]
    result = json.loads(out)
    assert (result["connected"], result["converged"], result["failed"]) == (200, 200, 0)
    assert result["downloaded"] >= 1 and result["download_errors"] == 0
    assert result["telemetry_sent"] >= 200
    active = [d for d in fleet.get("/api/v1/devices") if d["device_id"].startswith("sim-")]
    assert {d["active_digest"] for d in active} == {digest}
    assert sum(b["reports"] for b in fleet.get("/api/v1/telemetry/rollups?limit=10")) >= 200
    # each said so when the simulation ended; the coordinator may still be storing the last of those
    wait_until(lambda: {d["availability"] for d in fleet.get("/api/v1/devices") if d["device_id"].startswith("sim-")}
               == {"stopped"}, timeout=30, what="every simulated device to be stopped")  # fmt: skip
