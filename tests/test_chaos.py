"""SIGKILL at random points during download and activation: every restart serves a verified model."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgefleet.local.chaos import padded_identity_model, run_chaos
from edgefleet.local.fleet import LocalFleet, wait_until
from tests.conftest import Keys, build

pytestmark = pytest.mark.slow

RUNS = 20  # bench/chaos_kill.py runs longer storms


def test_twenty_kills_during_rollouts_never_leave_the_device_without_a_verified_model(
    tmp_path: Path, fleet: LocalFleet, keys: Keys
) -> None:
    v1, d1 = build(padded_identity_model(tmp_path / "a.onnx", 3, seed=1), tmp_path / "a.bundle", keys, version="1")
    v2, d2 = build(padded_identity_model(tmp_path / "b.onnx", 3, seed=2), tmp_path / "b.bundle", keys, version="2")
    fleet.start_coordinator()
    # Restarts here are the test's doing: the crash-loop revert must not interfere.
    fleet.add_agent("gw-1", store={"crash_loop_restarts": 100})
    fleet.start_agent("gw-1")
    wait_until(lambda: fleet.device("gw-1"), timeout=20, what="agent registered")
    fleet.upload(v1)
    fleet.upload(v2)
    fleet.deploy(d1, ["gw-1"])
    fleet.wait_active(d1, ["gw-1"])

    report = run_chaos(fleet, "gw-1", [d1, d2], runs=RUNS, max_delay_s=0.5, seed=20261123)

    assert report.failures == []
    assert report.runs == RUNS
    assert set(report.served) == {d1, d2}, "kills landed both before and after activations"
    # And after the storm the agent still converges to what is desired.
    fleet.deploy(d2, ["gw-1"])
    fleet.wait_active(d2, ["gw-1"], timeout=30)
    leftovers = [p.name for p in (fleet.agents["gw-1"].data_dir / "store").glob(".*.tmp")]
    assert leftovers == [], "no torn temp files in the store"
