"""A bundle's min_version: a device does not go below it unless the signed desired state allows it."""

from __future__ import annotations

from pathlib import Path

from edgefleet.local.broker import LocalBroker
from edgefleet.local.fleet import LocalFleet, wait_until
from edgefleet.protocol.signing import write_keypair
from tests.conftest import DigitsModels, Keys, build


def _reported(fleet: LocalFleet, device_id: str) -> dict:
    return dict(((fleet.device(device_id) or {}).get("reported")) or {})


def test_a_bundle_below_the_active_min_version_is_refused_unless_the_deployment_allows_it(
    tmp_path: Path, mosquitto: LocalBroker, keys: Keys, digits: DigitsModels
) -> None:
    # Prepare: a signing coordinator, one agent running 2.0.0, which declares min_version 2.0.0
    command_key, _ = write_keypair(tmp_path / "command", private_name="command.key", public_name="command.pub")
    (tmp_path / "fleet").mkdir()
    fleet = LocalFleet(tmp_path / "fleet", mosquitto.url, [keys.public], command_key=command_key)
    try:
        fleet.start_coordinator()
        fleet.add_agent("gw-1")
        fleet.start_agent("gw-1")
        fleet.wait_registered(["gw-1"], timeout=30)
        v1, d1 = build(digits.v1, tmp_path / "v1.bundle", keys, version="1.0.0")
        v2, d2 = build(digits.v2, tmp_path / "v2.bundle", keys, version="2.0.0", min_version="2.0.0")
        fleet.upload(v1)
        fleet.upload(v2)
        fleet.deploy(d2)
        fleet.wait_active(d2, ["gw-1"])

        # Execute: deploy 1.0.0 plainly
        fleet.deploy(d1)

        # Assert: refused with the reason, 2.0.0 still serves
        error = wait_until(
            lambda: (e := _reported(fleet, "gw-1").get("last_error") or {}).get("bundle_digest") == d1 and e,
            timeout=60, what="the downgrade refused",
        )  # fmt: skip
        assert error["kind"] == "refused" and "below 2.0.0, the minimum version" in error["reason"], error
        assert fleet.device("gw-1")["active_digest"] == d2  # type: ignore[index]

        # Execute: the same deployment, allowing the downgrade explicitly
        allowed = fleet.http.post("/api/v1/deployments", json={"bundle_digest": d1, "allow_downgrade": True})
        assert allowed.status_code == 200, allowed.text

        # Assert: the device goes back to 1.0.0
        fleet.wait_active(d1, ["gw-1"])
    finally:
        fleet.stop()


def test_min_version_must_be_a_version_the_device_can_compare(
    tmp_path: Path, keys: Keys, digits: DigitsModels
) -> None:
    from typer.testing import CliRunner

    from edgefleet.cli.main import app

    result = CliRunner().invoke(app, [
        "bundle", "create", str(digits.v1), "--name", "digits", "--version", "1.0.0", "--device-class",
        "x86-gateway", "--key", str(keys.private), "-o", str(tmp_path / "b.bundle"), "--min-version", "latest",
    ])  # fmt: skip
    assert result.exit_code == 2 and "not a PEP 440 version" in result.output
    assert not (tmp_path / "b.bundle").exists()
