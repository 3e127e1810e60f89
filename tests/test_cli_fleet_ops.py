"""The fleet operator's commands over a real coordinator's REST API: the registry, device labels, alerts and
telemetry rollups, each in JSON and as a table, with the token's role enforced by the API."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefleet.common.exit_codes import ExitCode
from edgefleet.local.broker import LocalBroker
from edgefleet.local.fleet import LocalFleet, wait_until
from edgefleet.protocol.signing import write_keypair
from tests.conftest import DigitsModels, Keys, build


def _edgefleet(fleet: LocalFleet, *args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
    auth = ["--url", f"http://127.0.0.1:{fleet.api_port}", "--token", token or fleet.token]
    env = {"COLUMNS": "200"}  # a table wide enough that no column is cut
    return subprocess.run(
        [sys.executable, "-m", "edgefleet", *args, *auth], capture_output=True, text=True, timeout=120,
        env=os.environ | env,
    )  # fmt: skip


def _json(fleet: LocalFleet, *args: str, token: str | None = None):  # type: ignore[no-untyped-def]
    done = _edgefleet(fleet, *args, "--format", "json", token=token)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _reader(fleet: LocalFleet) -> str:
    """A read-only token, made by the admin token as an operator would."""
    return str(_json(fleet, "coordinator", "token", "create", "--role", "read-only", "--name", "viewer")["token"])


@pytest.fixture(scope="module")
def one_device(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFleet]:
    """A broker, a coordinator and one real agent (gw-1) reporting telemetry every second, for the module."""
    folder = tmp_path_factory.mktemp("fleet-ops")
    broker = LocalBroker(folder / "broker", prefer="mosquitto").start()
    public = write_keypair(folder / "keys")[1]
    (folder / "fleet").mkdir()
    fleet = LocalFleet(folder / "fleet", broker.url, [public])
    try:
        fleet.start_coordinator()
        fleet.add_agent("gw-1", "x86-gateway", telemetry_interval_s=1.0)
        fleet.start_agents(["gw-1"])
        fleet.wait_registered(["gw-1"])
        yield fleet
    finally:
        fleet.stop()
        broker.stop()


def test_registry_list_stage_promote_and_rollback_with_the_tokens_role(
    tmp_path: Path, fleet: LocalFleet, keys: Keys, digits: DigitsModels
) -> None:
    # Prepare: two versions of digits in the registry.
    fleet.start_coordinator()
    v1, _ = build(digits.v1, tmp_path / "v1.bundle", keys, version="1.0.0")
    v2, v2_digest = build(digits.v2, tmp_path / "v2.bundle", keys, version="2.0.0")
    for bundle in (v1, v2):
        assert _edgefleet(fleet, "coordinator", "upload", str(bundle)).returncode == 0

    # Execute + Assert: list, promote by MODEL:VERSION and by digest prefix, roll back, stage.
    listed = _json(fleet, "registry", "list")
    assert [m["model"] for m in listed] == ["digits"] and listed[0]["production"] is None
    assert {v["version"]: v["stage"] for v in listed[0]["versions"]} == {"1.0.0": "staging", "2.0.0": "staging"}
    assert _json(fleet, "registry", "promote", "digits:1.0.0")["production"] == "1.0.0"
    promoted = _json(fleet, "registry", "promote", v2_digest[:16])
    assert promoted["production"] == "2.0.0"
    assert {v["version"]: v["stage"] for v in promoted["versions"]} == {"1.0.0": "archived", "2.0.0": "production"}
    assert _json(fleet, "registry", "rollback", "digits")["production"] == "1.0.0"
    staged = _json(fleet, "registry", "stage", "digits:2.0.0", "--to", "staging")
    assert {v["version"]: v["stage"] for v in staged["versions"]} == {"1.0.0": "production", "2.0.0": "staging"}
    assert _json(fleet, "registry", "promote", "digits:staging")["production"] == "2.0.0"  # a stage names a version
    moves = _json(fleet, "registry", "history", "digits")
    assert [(m["version"], m["stage"]) for m in moves][-1] == ("2.0.0", "production")

    table = _edgefleet(fleet, "registry", "show", "digits")
    assert table.returncode == 0 and "production" in table.stdout and v2_digest[:16] in table.stdout
    listing = _edgefleet(fleet, "registry", "list")
    assert listing.returncode == 0 and "digits" in listing.stdout and "2.0.0" in listing.stdout

    # A read-only token reads the registry but cannot change it (403 -> 7); unknown names are 5.
    reader = _reader(fleet)
    assert _json(fleet, "registry", "list", token=reader)[0]["production"] == "2.0.0"
    refused = _edgefleet(fleet, "registry", "promote", "digits:1.0.0", token=reader)
    assert refused.returncode == ExitCode.UNAUTHORIZED and "403" in refused.stderr
    assert _edgefleet(fleet, "registry", "promote", "digits:7.7.7").returncode == ExitCode.NOT_FOUND
    assert _edgefleet(fleet, "registry", "show", "nomodel").returncode == ExitCode.NOT_FOUND
    bad_stage = _edgefleet(fleet, "registry", "stage", "digits:1.0.0", "--to", "gone")
    assert bad_stage.returncode == ExitCode.USAGE


def test_labels_set_remove_and_list_a_devices_tags_and_group(one_device: LocalFleet) -> None:
    fleet = one_device
    # Execute: tags added, one removed, a group set and then removed.
    added = _json(fleet, "labels", "set", "gw-1", "--tag", "lab", "--tag", "cam", "--group", "north")
    removed = _json(fleet, "labels", "remove", "gw-1", "--tag", "cam")
    listed = _json(fleet, "labels", "list", "--tag", "lab")
    counts = _json(fleet, "labels", "list", "--counts")
    table = _edgefleet(fleet, "labels", "list")
    ungrouped = _json(fleet, "labels", "remove", "gw-1", "--group")
    replaced = _json(fleet, "labels", "set", "gw-1", "--tag", "field", "--replace")

    # Assert: each answer is the device's labels after the change, as the fleet list shows them too.
    assert (added["tags"], added["group"]) == (["cam", "lab"], "north")
    assert (removed["tags"], removed["group"]) == (["lab"], "north")
    assert listed == [{"device_id": "gw-1", "device_class": "x86-gateway", "tags": ["lab"], "group": "north"}]
    assert counts["tags"] == [{"name": "lab", "devices": 1}] and counts["groups"] == [{"name": "north", "devices": 1}]
    assert table.returncode == 0 and "gw-1" in table.stdout and "north" in table.stdout
    assert ungrouped["group"] is None and ungrouped["tags"] == ["lab"]
    assert replaced["tags"] == ["field"]
    assert _json(fleet, "labels", "list", "--tag", "lab") == []
    device = fleet.device("gw-1")
    assert device is not None and device["tags"] == ["field"]

    # A read-only token lists labels but cannot change them; an unknown device is 5; nothing to do is 2.
    reader = _reader(fleet)
    assert _json(fleet, "labels", "list", token=reader)[0]["tags"] == ["field"]
    assert _edgefleet(fleet, "labels", "set", "gw-1", "--tag", "x", token=reader).returncode == ExitCode.UNAUTHORIZED
    assert _edgefleet(fleet, "labels", "set", "nope", "--tag", "x").returncode == ExitCode.NOT_FOUND
    assert _edgefleet(fleet, "labels", "remove", "gw-1").returncode == ExitCode.USAGE


def test_alerts_list_shows_the_coordinators_alerts_with_thresholds_and_filters(one_device: LocalFleet) -> None:
    fleet = one_device
    # Prepare: the agent's latest report carries its data disk's used percent.
    wait_until(
        lambda: any(r.get("disk_used_percent") is not None for r in fleet.get("/api/v1/telemetry/latest")),
        timeout=30, what="a telemetry report with disk figures",
    )  # fmt: skip

    # Execute: the coordinator's thresholds, then one overridden so that any used disk is "full".
    default = _json(fleet, "alerts", "list", "--device", "gw-1", "--kind", "disk_full")
    full = _json(fleet, "alerts", "list", "--threshold", "max_disk_used_percent=0", "--kind", "disk_full")
    table = _edgefleet(fleet, "alerts", "list", "--threshold", "max_disk_used_percent=0")
    bad = _edgefleet(fleet, "alerts", "list", "--threshold", "max_disk_used_percent=200", "--format", "json")

    # Assert
    assert default == []
    assert [(a["kind"], a["device_id"]) for a in full] == [("disk_full", "gw-1")], full
    assert full[0]["severity"] in ("warning", "critical") and full[0]["detail"]
    assert table.returncode == 0 and "disk_full" in table.stdout and "gw-1" in table.stdout
    assert bad.returncode == ExitCode.USAGE and json.loads(bad.stderr)["exit_code"] == ExitCode.USAGE
    assert _json(fleet, "alerts", "list", "--threshold", "max_disk_used_percent=0", token=_reader(fleet))


def test_telemetry_rollups_of_a_device_and_of_the_fleet(one_device: LocalFleet) -> None:
    fleet = one_device
    # Prepare: gw-1 reports every second; its minute buckets fill as the coordinator stores the reports.
    wait_until(lambda: fleet.get("/api/v1/devices/gw-1/telemetry/rollups"), timeout=30, what="gw-1's rollups")

    # Execute
    device = _json(fleet, "telemetry", "rollups", "--device", "gw-1", "--limit", "5")
    hourly = _json(fleet, "telemetry", "rollups", "--device", "gw-1", "--resolution", "hour")
    whole = _json(fleet, "telemetry", "rollups")
    by_class = _json(fleet, "telemetry", "rollups", "--class", "x86-gateway")
    other_class = _json(fleet, "telemetry", "rollups", "--class", "rpi4")
    latest = _json(fleet, "telemetry", "latest")
    table = _edgefleet(fleet, "telemetry", "rollups", "--device", "gw-1")

    # Assert: the same reports, per device and summed over the fleet (which counts the devices reporting).
    assert 1 <= len(device) <= 5 and all(b["reports"] >= 1 for b in device)
    assert sum(b["reports"] for b in hourly) >= sum(b["reports"] for b in device)
    assert whole and whole[0]["devices"] == 1 and by_class[0]["devices"] == 1 and other_class == []
    assert [r["device_id"] for r in latest] == ["gw-1"]
    assert table.returncode == 0 and "bucket_start" in table.stdout
    unknown = _edgefleet(fleet, "telemetry", "rollups", "--device", "gw-1", "--since", "yesterday")
    assert unknown.returncode == ExitCode.USAGE
