"""The web dashboard in a real headless Chromium against a live coordinator with two real agents."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from edgefleet.agent.serving.client import InferenceClient
from edgefleet.compression.stats import input_stats
from edgefleet.local.fleet import LocalFleet, wait_until
from tests.conftest import DigitsModels, Keys, build

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DEVICES = ("gw-1", "gw-2")
NO_VALUE = "\u2013"  # what the dashboard shows for a figure it does not have


def _chromium(profile: Path, *args: str) -> str:
    """Run headless Chromium's own CLI; return stdout (the DOM with --dump-dom)."""
    assert CHROMIUM is not None
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",  # tests run as root in containers
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=5000",
        *args,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def _row(dom: str, device_id: str) -> str:
    match = re.search(rf'<tr data-device="{device_id}">(.*?)</tr>', dom, re.S)
    assert match, f"{device_id} is not in the device table:\n{dom[:3000]}"
    return match.group(1)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_dashboard_shows_the_fleet_device_charts_and_renders(
    tmp_path: Path, fleet: LocalFleet, keys: Keys, digits: DigitsModels
) -> None:
    # Prepare: two agents that run a real bundle and have served requests.
    base = fleet.start_coordinator()
    for device_id in DEVICES:
        fleet.add_agent(device_id, telemetry_interval_s=1.0)
    fleet.start_agents(list(DEVICES))
    fleet.wait_registered(list(DEVICES), timeout=20)
    # v1 carries the reference statistics of its inputs, so the agents score drift against it.
    stats, _ = input_stats({"pixels": digits.x_test})
    bundle, digest = build(digits.v1, tmp_path / "v1.bundle", keys, version="1.0.0", reference_stats=stats)
    fleet.upload(bundle)
    fleet.deploy(digest)
    fleet.wait_active(digest, list(DEVICES))
    # A finished two-wave rollout of v2 and back to v1 by operator: the rollouts view has waves, gates and states.
    v2, _ = build(digits.v2, tmp_path / "v2.bundle", keys, version="2.0.0")
    fleet.upload(v2)
    created = fleet.http.post("/api/v1/rollouts", json={"model": "digits", "version": "2.0.0", "waves": ["1", "100%"],
                                                        "soak_s": 0.5})  # fmt: skip
    assert created.status_code == 201, created.text
    rollout = created.json()
    wait_until(lambda: fleet.get(f"/api/v1/rollouts/{rollout['id']}")["status"] == "completed", timeout=60,
               what="the rollout to complete")  # fmt: skip
    fleet.deploy(digest)
    fleet.wait_active(digest, list(DEVICES))
    for round_ in range(3):
        for device_id in DEVICES:
            with InferenceClient(fleet.agents[device_id].target) as client:
                for _ in range(5 * (round_ + 1)):
                    client.predict({"pixels": digits.x_test[:50]})
        if round_ < 2:
            wait_until(
                lambda r=round_: (
                    len([t for t in fleet.get("/api/v1/devices/gw-1/telemetry") if t["inference_count"]]) > r
                ),
                timeout=10,
                what="a telemetry window with inferences",
            )
    wait_until(
        lambda: all(
            len([t for t in fleet.get(f"/api/v1/devices/{d}/telemetry") if t["inference_count"]]) >= 2 for d in DEVICES
        ),
        timeout=15,
        what="two telemetry windows with inferences on each device",
    )
    page = f"{base}/dashboard/#token={fleet.token}"

    # Execute: the overview, the device page and a screenshot, each in a fresh headless browser.
    overview = _chromium(tmp_path / "profile-1", "--dump-dom", page)
    device = _chromium(tmp_path / "profile-2", "--dump-dom", page + "&/device/gw-1")
    screenshot = tmp_path / "device.png"
    _chromium(tmp_path / "profile-3", f"--screenshot={screenshot}", "--window-size=1280,900", page + "&/device/gw-1")
    rollouts = _chromium(tmp_path / "profile-4", "--dump-dom", page + "&/rollouts")

    # Assert: both devices with their model version, online, and no API error on the page.
    assert 'id="error"' not in overview, overview
    for device_id in DEVICES:
        row = _row(overview, device_id)
        assert "digits 1.0.0" in row and ">online<" in row and "onnxruntime-cpu" in row
    assert "No campaigns yet." in overview
    # The device page draws every chart as SVG paths through the telemetry it read.
    assert 'id="error"' not in device, device
    paths = re.findall(r'<path class="series" d="([^"]+)"[^>]*data-series="([^"]+)" data-points="(\d+)"', device)
    series = {name: (d, int(points)) for d, name, points in paths}
    assert {"p50", "p95", "p99", "inferences/s", "errors", "inputs", "CPU", "memory", "data disk"} <= series.keys()
    d, points = series["inferences/s"]
    assert points >= 2 and d.count("L") == points - 1
    assert re.search(r"<circle ", device)
    assert 'data-chart="Throughput per minute"' in device and "History (per minute, " in device
    assert {"p50 (minute)", "p95 (minute)", "p99 (minute)"} <= series.keys(), "percentiles of the minute's histogram"
    kept = tmp_path.parent / f"{tmp_path.name}-dashboard-device.png"  # outlives the test's tmp_path cleanup
    shutil.copy(screenshot, kept)
    assert screenshot.stat().st_size > 10_000, kept
    # The overview read every device's latest figures in one request: CPU and memory shown.
    figures = dict(re.findall(r'<td class="num" data-figure="(\w+)">([^<]*)</td>', _row(overview, "gw-1")))
    assert 0 <= float(figures["cpu"]) <= 100 and 0 < float(figures["memory"]) <= 100, figures
    assert figures["temperature"] == NO_VALUE or float(figures["temperature"]) > 0, figures  # VMs have no zones
    # The rollouts view: the rollout's waves, its gate result and each device's state.
    assert 'id="error"' not in rollouts and "<h2>Recent events</h2>" in rollouts
    block = re.search(rf'<div class="rollout" data-rollout="{rollout["id"]}">(.*?)</table>', rollouts, re.S)
    assert block, rollouts[:3000]
    assert "digits:2.0.0" in block.group(1) and ">completed<" in block.group(1)
    assert re.findall(r'<span class="wave done">(wave \d: \d)</span>', block.group(1)) == ["wave 1: 1", "wave 2: 2"]
    assert "Gate / reason: gates not evaluated in 2 wave(s), no evidence to judge" in block.group(1)  # no traffic
    assert block.group(1).count(">active<") == len(DEVICES)
