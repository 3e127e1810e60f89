"""Staged rollouts across real agent processes: canary halt with automatic rollback, offline devices."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from edgefleet.agent.serving.client import InferenceClient
from edgefleet.compression.stats import input_stats
from edgefleet.coordinator.rollouts.spec import parse_waves
from edgefleet.local.fleet import LocalFleet, wait_until
from edgefleet.protocol.bundle import Manifest, extract_bundle, pack_bundle, sign_manifest
from tests.conftest import DigitsModels, Keys, build


def test_waves_are_cumulative_counts() -> None:
    assert parse_waves(["10%", "50%", "100%"], 20) == [2, 10, 20]
    assert parse_waves(["1%", "10%"], 20) == [1, 20], "the last wave always covers everyone"
    assert parse_waves(["1", "5", "100%"], 3) == [1, 3, 3]
    for bad in (["0%"], ["x"], ["50%", "10%"], []):
        with pytest.raises(ValueError):
            parse_waves(bad, 10)


def _failing_bundle(tmp_path: Path, keys: Keys, digits: DigitsModels, *, version: str, device_class: str) -> Path:
    """Signed and intact, but its test vectors come from another model: the agent's self-test fails."""
    good, _ = build(digits.v1, tmp_path / "donor.bundle", keys, version=version, device_class=device_class)
    with tempfile.TemporaryDirectory() as tmp:
        manifest = Manifest.model_validate_json(extract_bundle(good, Path(tmp)).manifest)
    other, _ = build(digits.v2, tmp_path / "other.bundle", keys, version=version, device_class=device_class)
    with tempfile.TemporaryDirectory() as tmp:
        other_manifest = Manifest.model_validate_json(extract_bundle(other, Path(tmp)).manifest)
        forged = manifest.model_copy(update={"files": other_manifest.files})
        model = Path(tmp) / "model.onnx"
        model.write_bytes(digits.v2.read_bytes())
        return pack_bundle(sign_manifest(forged, keys.private_key()), {"model.onnx": model}, tmp_path / "bad.bundle")


def _rollout(fleet: LocalFleet, body: dict[str, Any]) -> dict[str, Any]:
    response = fleet.http.post("/api/v1/rollouts", json=body)
    assert response.status_code == 201, response.text
    return dict(response.json())


def _wait_status(fleet: LocalFleet, rollout_id: str, statuses: set[str], timeout: float = 120) -> dict[str, Any]:
    return wait_until(
        lambda: (r := fleet.get(f"/api/v1/rollouts/{rollout_id}"))["status"] in statuses and r,
        timeout=timeout,
        interval=0.5,
        what=f"rollout {rollout_id} to become {statuses}",
    )


@pytest.mark.slow
def test_canary_rollout_halts_at_the_failing_class_and_a_good_bundle_reaches_everyone(
    tmp_path: Path, fleet: LocalFleet, keys: Keys, digits: DigitsModels
) -> None:
    gateways = [f"gw-{i:02d}" for i in range(12)]
    pis = [f"pi-{i:02d}" for i in range(8)]
    fleet.start_coordinator()
    for device_id in gateways:
        fleet.add_agent(device_id, "x86-gateway", telemetry_interval_s=1.0)
    for device_id in pis:
        fleet.add_agent(device_id, "rpi4", telemetry_interval_s=1.0)
    fleet.start_agents(gateways + pis)
    fleet.wait_registered(gateways + pis)

    v1 = {}
    for device_class in ("x86-gateway", "rpi4"):
        bundle, v1[device_class] = build(
            digits.v1, tmp_path / f"v1-{device_class}.bundle", keys, version="1.0.0", device_class=device_class
        )
        fleet.upload(bundle)
        fleet.deploy(v1[device_class])
    fleet.wait_active(v1["x86-gateway"], gateways, timeout=60)
    fleet.wait_active(v1["rpi4"], pis, timeout=60)

    good, good_digest = build(digits.v2, tmp_path / "v2-gw.bundle", keys, version="2.0.0", device_class="x86-gateway")
    fleet.upload(good)
    fleet.upload(_failing_bundle(tmp_path, keys, digits, version="2.0.0", device_class="rpi4"))
    rollout = _rollout(
        fleet, {"model": "digits", "version": "2.0.0", "waves": ["2", "25%", "50%", "100%"], "soak_s": 1}
    )
    halted = _wait_status(fleet, rollout["id"], {"halted", "completed"})

    assert halted["status"] == "halted", halted
    assert "failed to activate" in halted["reason"]
    states = {d["device_id"]: d for d in halted["device_states"]}
    first_pi_wave = min(states[p]["wave"] for p in pis)
    assert halted["wave"] == first_pi_wave, "halted at the first wave that includes the failing class"
    assert all(states[g]["state"] in ("pending", "rolled_back") for g in gateways if states[g]["wave"] > first_pi_wave)
    # Every touched device is told to run what it ran before, and does.
    for device_id in gateways + pis:
        device = fleet.device(device_id)
        assert device is not None
        expected = v1[device["device_class"]]
        if states[device_id]["state"] != "pending":
            assert device["desired"]["bundle_digest"] == expected
    fleet.wait_active(v1["rpi4"], pis, timeout=30)
    fleet.wait_active(v1["x86-gateway"], gateways, timeout=60)

    # A good release for both classes goes all the way.
    v3 = {}
    for device_class in ("x86-gateway", "rpi4"):
        bundle, v3[device_class] = build(
            digits.v2, tmp_path / f"v3-{device_class}.bundle", keys, version="3.0.0", device_class=device_class
        )
        fleet.upload(bundle)
    rollout = _rollout(fleet, {"model": "digits", "version": "3.0.0", "waves": ["25%", "100%"], "soak_s": 1})
    done = _wait_status(fleet, rollout["id"], {"halted", "completed"})
    assert done["status"] == "completed", done
    fleet.wait_active(v3["x86-gateway"], gateways, timeout=30)
    fleet.wait_active(v3["rpi4"], pis, timeout=30)
    kinds = [e["kind"] for e in fleet.get(f"/api/v1/events?rollout_id={rollout['id']}")]
    # No traffic was served: the waves were not evaluated, and the events say so rather than "passed".
    assert "completed" in kinds and "wave_not_evaluated" in kinds and "wave_passed" not in kinds
    assert good_digest  # the halted rollout's good half was never forced on anyone beyond its waves


@pytest.mark.slow
def test_offline_devices_are_skipped_and_said_so_and_wait_fails_unless_every_device_runs_the_bundle(
    tmp_path: Path, fleet: LocalFleet, keys: Keys, digits: DigitsModels
) -> None:
    ids = [f"gw-{i}" for i in range(10)]
    offline = ids[:3]
    fleet.start_coordinator()
    for device_id in ids:
        fleet.add_agent(device_id, "x86-gateway")
    fleet.start_agents(ids)
    fleet.wait_registered(ids)
    v1, d1 = build(digits.v1, tmp_path / "v1.bundle", keys, version="1.0.0")
    v2, d2 = build(digits.v2, tmp_path / "v2.bundle", keys, version="2.0.0")
    fleet.upload(v1)
    fleet.upload(v2)
    fleet.deploy(d1)
    fleet.wait_active(d1, ids)
    for device_id in offline:
        fleet.stop_agent(device_id)
    wait_until(
        lambda: all(fleet.device(d)["availability"] == "stopped" for d in offline),  # type: ignore[index]
        what="devices offline",
    )

    # A 1% canary wave takes one device that can take part, never an offline one.
    rollout = _rollout(fleet, {"model": "digits", "version": "2.0.0", "waves": ["1%", "100%"], "soak_s": 0.5})
    assert rollout["waves"] == [1, 7]
    done = _wait_status(fleet, rollout["id"], {"halted", "completed", "completed_with_skips"}, timeout=60)
    # Assert: not "completed": three targeted devices do not run the bundle, each named with why.
    assert done["status"] == "completed_with_skips", done
    assert "7 of 10 devices run the bundle" in done["reason"] and "not evaluated" in done["reason"], done["reason"]
    states = {d["device_id"]: (d["state"], d["detail"]) for d in done["device_states"]}
    for device_id in offline:
        assert states[device_id][0] == "skipped" and "not online when the rollout was created" in states[device_id][1]
        assert device_id in done["reason"]
    online = [d for d in ids if d not in offline]
    fleet.wait_active(d2, online)
    # The skipped devices keep what they ran: their desired state was not touched.
    assert all(fleet.device(d)["desired"]["bundle_digest"] == d1 for d in offline)  # type: ignore[index]
    # The CLI's --wait says it plainly: exit 1 unless every targeted device runs the bundle.
    result = subprocess.run(
        [sys.executable, "-m", "edgefleet", "rollout", "create", "digits:2.0.0", "--waves", "100%", "--soak", "0",
         "--wait", "--url", f"http://127.0.0.1:{fleet.api_port}", "--token", fleet.token, "--format", "json"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    assert json.loads(result.stdout)["status"] == "completed_with_skips"


def test_a_rollout_whose_targets_are_all_offline_is_refused(
    tmp_path: Path, fleet: LocalFleet, keys: Keys, digits: DigitsModels
) -> None:
    fleet.start_coordinator()
    fleet.add_agent("gw-0", "x86-gateway")
    fleet.start_agents(["gw-0"])
    fleet.wait_registered(["gw-0"])
    v2, _ = build(digits.v2, tmp_path / "v2.bundle", keys, version="2.0.0")
    fleet.upload(v2)
    fleet.stop_agent("gw-0")
    wait_until(lambda: fleet.device("gw-0")["availability"] == "stopped", what="gw-0 stopped")  # type: ignore[index]
    response = fleet.http.post("/api/v1/rollouts", json={"model": "digits", "version": "2.0.0"})
    assert response.status_code == 409 and "none is online (gw-0 stopped)" in response.json()["detail"]


@pytest.mark.slow
def test_drift_alerts_on_the_new_bundle_halt_the_rollout_and_roll_back(
    tmp_path: Path, fleet: LocalFleet, keys: Keys, digits: DigitsModels
) -> None:
    ids = ["gw-1", "gw-2"]
    fleet.start_coordinator()
    for device_id in ids:
        fleet.add_agent(device_id, "x86-gateway", telemetry_interval_s=1.0)
    fleet.start_agents(ids)
    fleet.wait_registered(ids)
    v1, d1 = build(digits.v1, tmp_path / "v1.bundle", keys, version="1.0.0")
    fleet.upload(v1)
    fleet.deploy(d1)
    fleet.wait_active(d1, ids)
    # v2 carries the reference distribution of its inputs, so agents running it score drift.
    stats, _ = input_stats({"pixels": digits.x_test})
    v2, d2 = build(digits.v2, tmp_path / "v2.bundle", keys, version="2.0.0", reference_stats=stats)
    fleet.upload(v2)

    rollout = _rollout(
        fleet,
        {
            "model": "digits", "version": "2.0.0", "waves": ["1", "100%"], "soak_s": 6,
            "gates": {"max_drift_alert_fraction": 0.5},
        },
    )  # fmt: skip
    canary = next(d["device_id"] for d in rollout["device_states"] if d["wave"] == 0)
    fleet.wait_active(d2, [canary])
    # The canary's traffic moves far outside the reference: every pixel lands above the top decile.
    shifted = digits.x_test + 100.0
    with InferenceClient(fleet.agents[canary].target) as client:
        while fleet.get(f"/api/v1/rollouts/{rollout['id']}")["status"] == "running":
            client.predict({"pixels": shifted})
            time.sleep(0.5)
    halted = _wait_status(fleet, rollout["id"], {"halted", "completed"}, timeout=5)

    assert halted["status"] == "halted", halted
    assert "drift" in halted["reason"] and canary in halted["reason"], halted["reason"]
    assert halted["wave"] == 0, "halted after the canary wave"
    states = {d["device_id"]: d["state"] for d in halted["device_states"]}
    assert states[canary] == "rolled_back" and all(states[d] == "pending" for d in ids if d != canary)
    fleet.wait_active(d1, ids, timeout=30)
