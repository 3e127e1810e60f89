"""Acknowledging and silencing alerts on a real coordinator (its REST API, the CLI, /metrics) with a real agent
whose clean stop raises an ``offline`` alert and whose start clears it; and the store-level rule that an
acknowledgment does not outlive the occurrence it was made on."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgefleet.common.exit_codes import ExitCode
from edgefleet.coordinator.config import AlertThresholds
from edgefleet.coordinator.health.alert_actions import acknowledge, fleet_alerts
from edgefleet.coordinator.store.sqlite import SQLiteStore
from edgefleet.local.broker import LocalBroker
from edgefleet.local.fleet import LocalFleet, wait_until
from edgefleet.protocol.messages import Availability, ReportedState, Telemetry
from edgefleet.protocol.signing import write_keypair


def _edgefleet(fleet: LocalFleet, *args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
    auth = ["--url", f"http://127.0.0.1:{fleet.api_port}", "--token", token or fleet.token]
    return subprocess.run(
        [sys.executable, "-m", "edgefleet", *args, *auth], capture_output=True, text=True, timeout=120,
        env=os.environ | {"COLUMNS": "200"},
    )  # fmt: skip


def _json(fleet: LocalFleet, *args: str, token: str | None = None) -> Any:
    done = _edgefleet(fleet, *args, "--format", "json", token=token)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _token(fleet: LocalFleet, role: str, name: str) -> str:
    return str(_json(fleet, "coordinator", "token", "create", "--role", role, "--name", name)["token"])


def _offline_alerts(fleet: LocalFleet, query: str = "") -> list[dict[str, Any]]:
    alerts = fleet.get("/api/v1/alerts" + query)
    return [a for a in alerts if a["kind"] == "offline" and a["device_id"] == "gw-1"]


def _gauge(fleet: LocalFleet, name: str, kind: str) -> float:
    text = fleet.http.get("/metrics").text
    line = next(line for line in text.splitlines() if line.startswith(f'{name}{{kind="{kind}"}}'))
    return float(line.split()[-1])


def _take_offline(fleet: LocalFleet) -> dict[str, Any]:
    """Stop gw-1 cleanly (its agent says "stopped") and wait for its offline alert."""
    if fleet.agents["gw-1"].proc is not None:
        fleet.stop_agent("gw-1")
    return wait_until(lambda: _offline_alerts(fleet), timeout=60, what="gw-1's offline alert")[0]


def _bring_back(fleet: LocalFleet) -> None:
    fleet.start_agent("gw-1")
    wait_until(lambda: not _offline_alerts(fleet), timeout=60, what="gw-1's offline alert to clear")


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFleet]:
    """A broker, a coordinator and one real agent (gw-1), for the module; an operator and a read-only token."""
    folder = tmp_path_factory.mktemp("alert-actions")
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


@pytest.fixture(scope="module")
def tokens(fleet: LocalFleet) -> dict[str, str]:
    return {"operator": _token(fleet, "operator", "ops"), "read-only": _token(fleet, "read-only", "viewer")}


def test_an_operator_acknowledges_an_alert_and_a_read_only_token_gets_403(
    fleet: LocalFleet, tokens: dict[str, str]
) -> None:
    # Prepare
    _take_offline(fleet)
    assert _offline_alerts(fleet)[0]["acknowledged"] is None

    # Execute
    refused = _edgefleet(fleet, "alerts", "ack", "offline", "gw-1", token=tokens["read-only"])
    refused_http = httpx.post(
        f"http://127.0.0.1:{fleet.api_port}/api/v1/alerts/acknowledgments",
        json={"kind": "offline", "device_id": "gw-1"}, headers={"Authorization": f"Bearer {tokens['read-only']}"},
    )  # fmt: skip
    acked = _json(fleet, "alerts", "ack", "offline", "gw-1", "--note", "site visit", token=tokens["operator"])
    missing = _edgefleet(fleet, "alerts", "ack", "disk_full", "gw-1", token=tokens["operator"])
    table = _edgefleet(fleet, "alerts", "list", token=tokens["read-only"])

    # Assert: 403 (exit 7) for read-only; the operator's acknowledgment is listed, by the token's name.
    assert refused.returncode == ExitCode.UNAUTHORIZED and "403" in refused.stderr
    assert refused_http.status_code == 403 and "needs role operator" in refused_http.json()["detail"]
    assert acked["acknowledged"]["by"] == "ops" and acked["acknowledged"]["note"] == "site visit"
    assert missing.returncode == ExitCode.NOT_FOUND and "no disk_full alert holds now" in missing.stderr
    [alert] = _offline_alerts(fleet)
    assert alert["acknowledged"] == acked["acknowledged"]
    assert datetime.fromisoformat(alert["acknowledged"]["at"]) <= datetime.now(UTC)
    assert table.returncode == 0 and "ops" in table.stdout and "offline" in table.stdout
    # /metrics: still an alert, but no longer an unacknowledged one
    assert _gauge(fleet, "edgefleet_fleet_alerts", "offline") == 1
    assert _gauge(fleet, "edgefleet_fleet_alerts_unacknowledged", "offline") == 0
    # Taken back: unacknowledged again; a second time there is nothing to take back (exit 5)
    assert _edgefleet(fleet, "alerts", "unack", "offline", "gw-1", token=tokens["read-only"]).returncode == 7
    assert _edgefleet(fleet, "alerts", "unack", "offline", "gw-1", token=tokens["operator"]).returncode == 0
    assert _offline_alerts(fleet)[0]["acknowledged"] is None
    assert _gauge(fleet, "edgefleet_fleet_alerts_unacknowledged", "offline") == 1
    assert _edgefleet(fleet, "alerts", "unack", "offline", "gw-1", token=tokens["operator"]).returncode == 5


def test_an_acknowledgment_is_dropped_when_the_alert_clears_and_comes_back(
    fleet: LocalFleet, tokens: dict[str, str]
) -> None:
    # Prepare: gw-1 offline and acknowledged
    _take_offline(fleet)
    _json(fleet, "alerts", "ack", "offline", "gw-1", "--note", "known", token=tokens["operator"])
    assert _offline_alerts(fleet)[0]["acknowledged"]["note"] == "known"

    # Execute: the agent comes back (the alert clears), then stops again (the alert comes back)
    _bring_back(fleet)
    back = _take_offline(fleet)

    # Assert: the alert that came back is a new one, unacknowledged everywhere
    assert back["acknowledged"] is None
    assert _json(fleet, "alerts", "list", "--kind", "offline")[0]["acknowledged"] is None
    assert _gauge(fleet, "edgefleet_fleet_alerts_unacknowledged", "offline") == 1


def test_a_silence_until_a_time_hides_the_alert_and_it_is_back_after_it(
    fleet: LocalFleet, tokens: dict[str, str]
) -> None:
    # Prepare
    _take_offline(fleet)
    refused = _edgefleet(fleet, "alerts", "silence", "offline", "--device", "gw-1", "--for", "1h",
                         token=tokens["read-only"])  # fmt: skip
    # Long enough for the checks below on a loaded machine, each CLI call a Python start-up.
    until = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=40)

    # Execute
    made = _json(fleet, "alerts", "silence", "offline", "--device", "gw-1", "--until", until.isoformat(),
                 "--note", "maintenance", token=tokens["operator"])  # fmt: skip

    # Assert: hidden from the list (shown with include_silenced), counted apart in /metrics, until its time
    assert refused.returncode == ExitCode.UNAUTHORIZED and "403" in refused.stderr
    assert (made["device_id"], made["silenced_by"], made["note"]) == ("gw-1", "ops", "maintenance")
    assert datetime.fromisoformat(made["until"]) == until
    assert _offline_alerts(fleet) == []
    assert _json(fleet, "alerts", "list", "--kind", "offline") == []
    [hidden] = _offline_alerts(fleet, "?include_silenced=true")
    assert datetime.fromisoformat(hidden["silenced_until"]) == until
    assert [(s["kind"], s["device_id"]) for s in _json(fleet, "alerts", "silences")] == [("offline", "gw-1")]
    assert _gauge(fleet, "edgefleet_fleet_alerts", "offline") == 0
    assert _gauge(fleet, "edgefleet_fleet_alerts_silenced", "offline") == 1
    assert datetime.now(UTC) < until, "the checks above took longer than the silence lasts"
    [back] = wait_until(lambda: _offline_alerts(fleet), timeout=120, what="the silence to end")
    assert datetime.now(UTC) >= until and back["silenced_until"] is None
    assert _json(fleet, "alerts", "silences") == []
    assert _gauge(fleet, "edgefleet_fleet_alerts_silenced", "offline") == 0


def test_a_silence_of_every_device_is_lifted_by_unsilence(fleet: LocalFleet, tokens: dict[str, str]) -> None:
    # Prepare
    _take_offline(fleet)
    _json(fleet, "alerts", "silence", "offline", "--for", "1h", token=tokens["operator"])
    assert _offline_alerts(fleet) == []

    # Execute
    lifted = _json(fleet, "alerts", "unsilence", "offline", token=tokens["operator"])
    again = _edgefleet(fleet, "alerts", "unsilence", "offline", token=tokens["operator"])
    bad = _edgefleet(fleet, "alerts", "silence", "offline", token=tokens["operator"])
    past = _edgefleet(
        fleet, "alerts", "silence", "offline", "--until", "2020-01-01T00:00:00Z", token=tokens["operator"]
    )

    # Assert
    assert lifted == {"kind": "offline", "device_id": "*", "lifted": True}
    assert _offline_alerts(fleet) and _json(fleet, "alerts", "silences") == []
    assert again.returncode == ExitCode.NOT_FOUND
    assert bad.returncode == ExitCode.USAGE and "--until" in bad.stderr
    assert past.returncode == ExitCode.USAGE and "must end in the future" in past.stderr


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed (apt-get install chromium)")
def test_the_dashboard_shows_who_acknowledged_an_alert_and_its_actions(
    tmp_path: Path, fleet: LocalFleet, tokens: dict[str, str]
) -> None:
    # Prepare: gw-1 offline, acknowledged by the operator token over the API
    _take_offline(fleet)
    acked = httpx.post(
        f"http://127.0.0.1:{fleet.api_port}/api/v1/alerts/acknowledgments",
        json={"kind": "offline", "device_id": "gw-1", "note": "cable"},
        headers={"Authorization": f"Bearer {tokens['operator']}"},
    )  # fmt: skip
    assert acked.status_code == 201, acked.text

    # Execute: the alerts view rendered by a real (headless) browser
    page = f"http://127.0.0.1:{fleet.api_port}/dashboard/#token={tokens['read-only']}&/alerts"
    done = subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
         "--disable-background-networking", f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000",
         "--dump-dom", page],
        capture_output=True, text=True, timeout=90, check=False,
    )  # fmt: skip

    # Assert: the row names who acknowledged it with the note; only the silence action is left to offer
    assert done.returncode == 0, done.stderr[-2000:]
    row = re.search(r'<tr data-alert="offline">(.*?)</tr>', done.stdout, re.S)
    assert row, done.stdout[:3000]
    assert re.search(r'class="acknowledged">ops .*cable', row.group(1), re.S), row.group(1)
    assert 'data-action="silence"' in row.group(1) and 'data-action="ack"' not in row.group(1)


def test_an_acknowledgment_of_an_alert_that_cleared_and_came_back_unseen_is_dropped(tmp_path: Path) -> None:
    """No computation saw the device online in between: the new occurrence's later onset tells it apart."""
    # Prepare: gw-9 offline and acknowledged
    db = SQLiteStore(tmp_path / "fleet.db")
    db.record_availability(Availability(device_id="gw-9", state="offline"))
    acknowledge(db, AlertThresholds(), ("offline", "gw-9", ""), by="ops", note=None)
    [first] = fleet_alerts(db, AlertThresholds(), configured=False)
    assert first.acknowledged is not None and first.acknowledged["by"] == "ops"

    # Execute: it comes back and goes offline again, while nobody asks for alerts
    db.record_availability(Availability(device_id="gw-9", state="online"))
    db.record_availability(Availability(device_id="gw-9", state="offline"))
    unseen = fleet_alerts(db, AlertThresholds(), configured=False)  # with other thresholds: nothing written
    kept = db.alert_state.acknowledgments()
    seen = fleet_alerts(db, AlertThresholds(), configured=True)

    # Assert
    assert [(v.alert.kind, v.acknowledged) for v in unseen] == [("offline", None)]
    assert len(kept) == 1 and [v.acknowledged for v in seen] == [None]
    assert db.alert_state.acknowledgments() == []


def test_an_acknowledged_overheating_alert_stays_acknowledged_while_the_chip_stays_hot(tmp_path: Path) -> None:
    """Its ``since`` is the first report of the hot run, so each new hot report is the same alert."""
    # Prepare: gw-9 (x86-gateway: throttle at 90 °C) reports hot and the alert is acknowledged
    db = SQLiteStore(tmp_path / "fleet.db")
    db.record_reported(ReportedState(device_id="gw-9", device_class="x86-gateway", agent_version="1", status="ready",
                                     started_at=datetime.now(UTC)))  # fmt: skip

    def report(celsius: float) -> None:
        assert db.add_telemetry(Telemetry(device_id="gw-9", window_s=1.0, inference_count=1, error_count=0,
                                          soc_temp_c=celsius))  # fmt: skip

    report(92.0)
    acknowledge(db, AlertThresholds(), ("overheating", "gw-9", ""), by="ops", note=None)

    # Execute: hotter reports, then a cool one and hot again, nobody asking for alerts in between
    report(95.0)
    report(101.0)
    still = fleet_alerts(db, AlertThresholds(), configured=False)
    report(80.0)
    report(93.0)
    again = fleet_alerts(db, AlertThresholds(), configured=False)

    # Assert
    assert [(v.alert.kind, v.alert.severity, v.acknowledged is not None) for v in still] == [
        ("overheating", "critical", True)
    ]
    assert [(v.alert.kind, v.acknowledged) for v in again] == [("overheating", None)]
