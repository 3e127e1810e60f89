"""The device class's [thermal] limits are acted on: over throttle_c federated training is declined, over
critical_c the agent sheds load (UNAVAILABLE with the temperature) and the coordinator raises an
``overheating`` alert; both end once the chip cools below the limit by the hysteresis. The temperature is
the kernel's thermal-zone files, here a folder of real files the test writes (a hot chip is a fault this
machine cannot cause)."""

from __future__ import annotations

import logging
from pathlib import Path

import grpc
import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict

from edgefleet.agent.device_class import load_device_class
from edgefleet.agent.serving.client import InferenceClient
from edgefleet.agent.telemetry.thermal import HYSTERESIS_C, ThermalGuard
from edgefleet.local.fleet import LocalFleet, wait_until
from edgefleet.protocol.campaign import Decline
from tests.conftest import DigitsModels, Keys, build


def _zone(folder: Path, celsius: float, kind: str = "cpu-thermal") -> Path:
    zone = folder / "thermal_zone0"
    zone.mkdir(parents=True, exist_ok=True)
    (zone / "type").write_text(kind + "\n")
    (zone / "temp").write_text(f"{int(celsius * 1000)}\n")
    return folder


def test_the_guard_moves_between_states_with_hysteresis_and_keeps_a_marker(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    limits = load_device_class("rpi4").thermal  # throttle 80, critical 85
    zones = tmp_path / "thermal"
    guard = ThermalGuard(limits, zones=str(zones / "thermal_zone*"), marker=tmp_path / "marker")
    caplog.set_level(logging.WARNING)

    seen = []
    for celsius in (50, limits.throttle_c + 1, limits.critical_c + 1, limits.critical_c - HYSTERESIS_C + 1,
                    limits.critical_c - HYSTERESIS_C - 1, limits.throttle_c - HYSTERESIS_C + 1,
                    limits.throttle_c - HYSTERESIS_C - 1):  # fmt: skip
        _zone(zones, celsius)
        seen.append((guard.check(), (tmp_path / "marker").exists(), guard.shedding() is not None))

    assert seen == [
        ("normal", False, False), ("throttled", True, False), ("critical", True, True), ("critical", True, True),
        ("throttled", True, False), ("throttled", True, False), ("normal", False, False),
    ]  # fmt: skip
    assert [r.levelname for r in caplog.records] == ["WARNING", "ERROR", "WARNING", "WARNING"]
    assert "86.0 °C" in caplog.records[1].getMessage() and "critical 85 °C" in caplog.records[1].getMessage()


def test_no_thermal_zone_means_nothing_to_act_on(tmp_path: Path) -> None:
    guard = ThermalGuard(load_device_class("rpi4").thermal, zones=str(tmp_path / "none*"), marker=tmp_path / "m")
    assert guard.check() == "normal" and guard.celsius is None and guard.shedding() is None


def test_a_throttled_device_declines_training_with_the_reason(tmp_path: Path) -> None:
    from edgefleet.federated.client.client_app import app as client_app
    from edgefleet.federated.inprocess import InProcessGrid
    from edgefleet.federated.models import build_model
    from edgefleet.federated.spec import CampaignSpec
    from edgefleet.federated.weights import model_to_arrays

    InProcessGrid([])  # sets Flower's task identity for building messages here
    spec = CampaignSpec(model="digits", min_samples=10)
    config = ConfigRecord({"campaign-id": "c-hot", "campaign": spec.model_dump_json(), "server-round": 1})
    message = Message(RecordDict({"arrays": model_to_arrays(build_model("mlp")), "config": config}), dst_node_id=7,
                      message_type="train")  # fmt: skip
    message.metadata.__dict__["_message_id"] = "m1"
    marker = tmp_path / "thermal-throttled"
    marker.write_text("throttled: the SoC is at 81.0 °C, at or over 80 °C; federated training pauses\n")
    context = Context(1, 7, {"samples-db": str(tmp_path / "none.sqlite"), "device-id": "pi-1",
                             "thermal-marker": str(marker)}, RecordDict(), {})  # fmt: skip

    reply = client_app(message, context)

    assert reply.has_error() and reply.error.code == Decline.THROTTLED
    assert "81.0 °C" in (reply.error.reason or "")


@pytest.mark.slow
def test_an_agent_over_its_critical_limit_sheds_load_and_the_coordinator_alerts(
    tmp_path: Path, fleet: LocalFleet, keys: Keys, digits: DigitsModels
) -> None:
    # Prepare: an agent whose thermal zones are a folder the test writes, with digits active
    limits = load_device_class("x86-gateway").thermal
    zones = _zone(tmp_path / "thermal", 45.0, kind="x86_pkg_temp")
    fleet.start_coordinator()
    agent = fleet.add_agent("hot-1", thermal_zones=str(zones / "thermal_zone*"))
    fleet.start_agent("hot-1")
    fleet.wait_registered(["hot-1"])
    bundle, digest = build(digits.v1, tmp_path / "v1.bundle", keys, version="1.0.0")
    fleet.upload(bundle)
    fleet.deploy(digest, ["hot-1"])
    fleet.wait_active(digest, ["hot-1"])
    socket = f"unix://{agent.data_dir / 'agent.sock'}"
    row = {"pixels": digits.x_test[:1]}

    def answer() -> grpc.StatusCode | None:
        with InferenceClient(socket) as client:
            try:
                client.predict(row)
            except grpc.RpcError as exc:
                return exc.code()
        return None

    def overheating() -> list[dict[str, object]]:
        return [a for a in fleet.get("/api/v1/alerts") if a["kind"] == "overheating" and a["device_id"] == "hot-1"]

    assert answer() is None and not overheating()

    # Execute: the chip goes over its critical limit
    _zone(zones, limits.critical_c + 2, kind="x86_pkg_temp")

    # Assert: requests are refused with the reason, the coordinator alerts, and both end when it cools
    wait_until(lambda: answer() == grpc.StatusCode.UNAVAILABLE, timeout=30, what="load shedding")
    with InferenceClient(socket) as client, pytest.raises(grpc.RpcError) as refused:
        client.predict(row)
    assert "shedding load" in (refused.value.details() or "") and f"{limits.critical_c + 2:.1f} °C" in (
        refused.value.details() or ""
    )
    alert = wait_until(overheating, timeout=30, what="an overheating alert")[0]
    assert alert["severity"] == "critical" and f"critical {limits.critical_c:g} °C" in str(alert["detail"])
    _zone(zones, limits.throttle_c - HYSTERESIS_C - 5, kind="x86_pkg_temp")
    wait_until(lambda: answer() is None, timeout=30, what="serving again")
    wait_until(lambda: not overheating(), timeout=30, what="the alert to end")
