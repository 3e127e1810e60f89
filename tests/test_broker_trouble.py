"""An agent that cannot reach its broker says why in its log, within seconds, and keeps retrying: a port
nobody listens on, a name that does not resolve, TLS against a plain port, a refused login; and it says so
once more when it gets through. Real agent processes, a real Mosquitto."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgefleet.local.broker import LocalBroker, free_port
from edgefleet.local.fleet import LocalFleet, wait_until
from tests.conftest import SecuredBroker

pytestmark = pytest.mark.slow


def _log(fleet: LocalFleet, device_id: str) -> str:
    path = fleet.workdir / f"{device_id}.log"
    return path.read_text(errors="replace") if path.exists() else ""


def _wait_logged(fleet: LocalFleet, device_id: str, *needles: str) -> str:
    return wait_until(
        lambda: (text := _log(fleet, device_id)) and all(n in text for n in needles) and text,
        timeout=20, interval=0.2, what=f"{device_id} to log {needles}",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("mqtt://127.0.0.1:{closed}", "Connection refused"),
        ("mqtt://no-such-broker.invalid:1883", "cannot resolve 'no-such-broker.invalid'"),
        ("mqtts://127.0.0.1:{plain}", "TLS handshake with 127.0.0.1:{plain} failed"),
    ],
    ids=["closed-port", "unknown-host", "tls-on-a-plain-port"],
)
def test_an_agent_that_cannot_reach_its_broker_says_why(
    fleet: LocalFleet, mosquitto: LocalBroker, url: str, said: str
) -> None:
    ports = {"closed": free_port(), "plain": mosquitto.port}
    fleet.add_agent("lost-1", broker={"url": url.format(**ports)})
    fleet.start_agent("lost-1")  # its local API serves while the broker is away

    text = _wait_logged(fleet, "lost-1", "cannot connect to broker", said.format(**ports))

    assert "retrying" in text
    assert fleet.agents["lost-1"].proc.poll() is None  # type: ignore[union-attr]


def test_an_agent_says_when_it_gets_through_after_failed_attempts(tmp_path: Path, fleet: LocalFleet) -> None:
    port = free_port()
    fleet.add_agent("late-1", broker={"url": f"mqtt://127.0.0.1:{port}"})
    fleet.start_agent("late-1")
    _wait_logged(fleet, "late-1", "cannot connect to broker", "Connection refused")

    late = LocalBroker(tmp_path / "late-broker", prefer="mosquitto")
    late.port = port  # the broker the agent was configured for comes up at last
    late.start()
    try:
        _wait_logged(fleet, "late-1", f"connected to broker mqtt://127.0.0.1:{port} after")
    finally:
        late.stop()


def test_a_refused_login_is_logged_once_per_interval(
    tmp_path: Path, secured_broker: SecuredBroker, keys: object
) -> None:
    fleet = LocalFleet(tmp_path / "f", secured_broker.url, [keys.public])  # type: ignore[attr-defined]
    try:
        fleet.add_agent("login-1", broker={"url": secured_broker.url, "username": "login-1", "password": "wrong"})
        fleet.start_agent("login-1")
        text = _wait_logged(fleet, "login-1", "cannot connect to broker", "the broker refused the connection")
        assert text.count("the broker refused the connection") == 1  # paho retries; the log does not repeat each try
    finally:
        fleet.stop()
