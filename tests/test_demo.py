"""`edgefleet demo` as a user on a fresh machine runs it: with the pure-Python broker."""

from __future__ import annotations

import subprocess
import sys

import psutil
import pytest

pytestmark = pytest.mark.slow


def test_demo_rolls_out_to_every_agent_and_leaves_no_process() -> None:
    # Its duration (about a minute on an idle 2-core machine) is measured, not asserted: a loaded CI machine is slower.
    result = subprocess.run(
        [sys.executable, "-m", "edgefleet", "demo", "--agents", "2", "--broker", "amqtt"],
        capture_output=True,
        text=True,
        timeout=300,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "broker: amqtt" in result.stdout
    rows = [line for line in result.stdout.splitlines() if "gateway-0" in line]
    assert len(rows) == 2
    for row in rows:
        cells = [c.strip() for c in row.split("│") if c.strip()]
        assert cells[1:3] == ["digits", "1.0.0"]
        assert float(cells[3]) > 0.9, "a real model, really served"
    leftovers = [
        p.info["cmdline"]
        for p in psutil.process_iter(["cmdline"])
        if any("edgefleet-demo-" in part for part in (p.info["cmdline"] or []))
    ]
    assert leftovers == []


def test_demo_stopped_by_sigterm_leaves_no_process_behind() -> None:
    """As `timeout` or a service manager stops it: the broker, coordinator, receiver and agents go too."""
    import signal

    from edgefleet.local.fleet import wait_until

    demo = subprocess.Popen(
        [sys.executable, "-m", "edgefleet", "demo", "--agents", "1", "--broker", "amqtt"],
        stdout=subprocess.PIPE, text=True, env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert demo.stdout is not None
    try:
        for line in demo.stdout:  # wait until every process is up
            if "agents running" in line:
                break
        else:
            pytest.fail("the demo ended before its agents ran")
        demo.send_signal(signal.SIGTERM)
        assert demo.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        if demo.poll() is None:
            demo.kill()

    def leftovers() -> list[list[str]]:
        return [
            p.info["cmdline"]
            for p in psutil.process_iter(["cmdline"])
            if any("edgefleet-demo-" in part for part in (p.info["cmdline"] or []))
        ]

    wait_until(lambda: not leftovers(), timeout=20, what="every process of the demo to end")
