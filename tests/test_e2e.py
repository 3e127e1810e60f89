"""End to end on real parts: Mosquitto, a coordinator and agents as separate processes."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import numpy as np
import onnxruntime as ort
import paho.mqtt.publish as publish
import pytest

from edgefleet.agent.serving.client import InferenceClient
from edgefleet.local.broker import LocalBroker
from edgefleet.local.fleet import LocalFleet, wait_until
from edgefleet.protocol.messages import BundleRef, DesiredState
from edgefleet.protocol.topics import Channel, topic
from tests.conftest import DigitsModels, Keys, build

pytestmark = pytest.mark.slow


def _direct(model: Path, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(model)).run(["logits"], {"pixels": x})[0]


def _start(fleet: LocalFleet, *device_ids: str, trusted: list[Path] | None = None) -> None:
    fleet.start_coordinator(trusted)
    for device_id in device_ids:
        fleet.add_agent(device_id)
        fleet.start_agent(device_id)
    fleet.wait_registered(list(device_ids), timeout=20)


def _reported(fleet: LocalFleet, device_id: str) -> dict:
    device = fleet.device(device_id)
    assert device is not None
    return dict(device["reported"] or {})


def test_rollout_reaches_both_agents_and_a_second_version_replaces_the_first(
    tmp_path: Path, fleet: LocalFleet, keys: Keys, digits: DigitsModels
) -> None:
    _start(fleet, "gw-1", "gw-2")
    v1, d1 = build(digits.v1, tmp_path / "v1.bundle", keys, version="1.0.0")
    assert fleet.upload(v1) == d1
    assert {r["device_id"] for r in fleet.deploy(d1)} == {"gw-1", "gw-2"}
    fleet.wait_active(d1, ["gw-1", "gw-2"])

    for device_id in ("gw-1", "gw-2"):
        state = _reported(fleet, device_id)
        assert state["status"] == "ready" and state["runtime"] == "onnxruntime-cpu"
        # x86-gateway's chain starts with CUDA; on this CPU machine the report says why it was skipped.
        assert state["runtime_skipped"] and state["runtime_skipped"][0].startswith("onnxruntime-cuda:")
        with InferenceClient(fleet.agents[device_id].target) as client:
            result = client.predict({"pixels": digits.x_test})
        np.testing.assert_array_equal(result.outputs["logits"], _direct(digits.v1, digits.x_test))
        assert result.model_version == "1.0.0"

    v2, d2 = build(digits.v2, tmp_path / "v2.bundle", keys, version="2.0.0", parent=d1)
    fleet.upload(v2)
    fleet.deploy(d2)
    fleet.wait_active(d2, ["gw-1", "gw-2"])
    for device_id in ("gw-1", "gw-2"):
        state = _reported(fleet, device_id)
        assert state["active"]["version"] == "2.0.0"
        assert state["previous"]["digest"] == d1, "the old bundle stays in the B slot"
        with InferenceClient(fleet.agents[device_id].target) as client:
            result = client.predict({"pixels": digits.x_test})
        np.testing.assert_array_equal(result.outputs["logits"], _direct(digits.v2, digits.x_test))

    # Telemetry of those inferences reaches the coordinator.
    rows = wait_until(
        lambda: [r for r in fleet.get("/api/v1/devices/gw-1/telemetry") if r["inference_count"] > 0],
        timeout=30,
        what="telemetry with inferences",
    )
    assert rows[0]["latency_ms_p50"] > 0


def test_tampered_file_and_foreign_signature_are_refused_and_the_old_model_keeps_serving(
    tmp_path: Path, fleet: LocalFleet, keys: Keys, other_keys: Keys, digits: DigitsModels
) -> None:
    # The coordinator trusts both keys; the agent only `keys`.
    _start(fleet, "gw-1", trusted=[keys.public, other_keys.public])
    v1, d1 = build(digits.v1, tmp_path / "v1.bundle", keys, version="1.0.0")
    fleet.upload(v1)
    fleet.deploy(d1)
    fleet.wait_active(d1, ["gw-1"])

    # 1. One flipped byte in the model as the coordinator stores it.
    v2, d2 = build(digits.v2, tmp_path / "v2.bundle", keys, version="2.0.0")
    fleet.upload(v2)
    blob = fleet.workdir / "coordinator" / "data" / "blobs" / _model_sha(fleet, d2)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    fleet.deploy(d2)
    error = wait_until(
        lambda: (
            (_reported(fleet, "gw-1").get("last_error") or {}).get("bundle_digest") == d2 and _reported(fleet, "gw-1")
        ),
        what="refusal",
    )
    assert "tampered" in error["last_error"]["reason"]
    assert error["active"]["digest"] == d1 and error["status"] == "ready"

    # 2. A bundle signed by a key the agent does not trust.
    v3, d3 = build(digits.v2, tmp_path / "v3.bundle", other_keys, version="3.0.0")
    fleet.upload(v3)
    fleet.deploy(d3)
    error = wait_until(
        lambda: (
            (_reported(fleet, "gw-1").get("last_error") or {}).get("bundle_digest") == d3 and _reported(fleet, "gw-1")
        ),
        what="refusal",
    )
    assert "not trusted" in error["last_error"]["reason"]
    assert error["active"]["digest"] == d1

    with InferenceClient(fleet.agents["gw-1"].target) as client:
        result = client.predict({"pixels": digits.x_test[:5]})
    assert result.bundle_digest == d1
    np.testing.assert_array_equal(result.outputs["logits"], _direct(digits.v1, digits.x_test[:5]))


def _model_sha(fleet: LocalFleet, digest: str) -> str:
    manifest = json.loads(fleet.get(f"/api/v1/bundles/{digest}")["manifest"])
    return next(f["sha256"] for f in manifest["files"] if f["name"] == manifest["model_file"])


def test_malformed_payloads_are_rejected_and_the_agent_carries_on(
    tmp_path: Path, fleet: LocalFleet, mosquitto: LocalBroker, keys: Keys, digits: DigitsModels
) -> None:
    _start(fleet, "gw-1")
    host, port = "127.0.0.1", mosquitto.port
    wrong_device = DesiredState(
        device_id="gw-2", revision=99, bundle=BundleRef(digest="a" * 64, name="x", version="1")
    ).to_bytes()
    garbage = [
        (topic("gw-1", Channel.DESIRED), b"\x00\xffnot json"),
        (topic("gw-1", Channel.DESIRED), b'{"schema_version": 7, "device_id": "gw-1", "revision": 1}'),
        (topic("gw-1", Channel.DESIRED), wrong_device),
        (topic("gw-1", Channel.DESIRED), b"{" * 70_000),
        (topic("gw-1", Channel.CHUNKS), b"\x00\x00\x00\x09{garbage}"),
        (topic("gw-1", Channel.COMMANDS), b'{"name": "format_disk"}'),
    ]
    for name, payload in garbage:
        publish.single(name, payload, qos=1, hostname=host, port=port)
    # After the garbage, a valid rollout still works, and the report counts what was rejected.
    v1, d1 = build(digits.v1, tmp_path / "v1.bundle", keys, version="1.0.0")
    fleet.upload(v1)
    fleet.deploy(d1)
    fleet.wait_active(d1, ["gw-1"])
    state = _reported(fleet, "gw-1")
    assert state["rejected_messages"] == len(garbage)
    assert fleet.agents["gw-1"].proc is not None and fleet.agents["gw-1"].proc.poll() is None
    log = (fleet.workdir / "gw-1.log").read_text()
    assert "unsupported schema_version 7" in log
    assert "names device 'gw-2'" in log
    assert "exceeds" in log


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_restart_with_the_broker_down_still_serves_the_active_model(
    tmp_path: Path, fleet: LocalFleet, mosquitto: LocalBroker, keys: Keys, digits: DigitsModels, how: int
) -> None:
    _start(fleet, "gw-1")
    v1, d1 = build(digits.v1, tmp_path / "v1.bundle", keys, version="1.0.0")
    fleet.upload(v1)
    fleet.deploy(d1)
    fleet.wait_active(d1, ["gw-1"])
    first_start = _reported(fleet, "gw-1")["started_at"]

    mosquitto.stop()
    fleet.stop_agent("gw-1", how)
    fleet.start_agent("gw-1")
    with InferenceClient(fleet.agents["gw-1"].target) as client:
        info = wait_until(lambda: client.model_info().loaded and client.model_info(), what="model loaded")
        assert info.bundle_digest == d1
        result = client.predict({"pixels": digits.x_test})
    np.testing.assert_array_equal(result.outputs["logits"], _direct(digits.v1, digits.x_test))

    # When the broker returns, the new agent process connects and reports the same model.
    mosquitto.start()
    state = wait_until(
        lambda: (s := _reported(fleet, "gw-1"))["started_at"] != first_start and s,
        timeout=40,
        what="reconnect",
    )
    assert state["active"]["digest"] == d1 and state["status"] == "ready"


def test_availability_is_online_then_stopped_or_offline_by_last_will(fleet: LocalFleet) -> None:
    _start(fleet, "gw-1", "gw-2")
    for device_id in ("gw-1", "gw-2"):
        wait_until(lambda d=device_id: fleet.device(d)["availability"] == "online", what=f"{device_id} online")  # type: ignore[index]
    fleet.stop_agent("gw-1", signal.SIGTERM)
    fleet.stop_agent("gw-2", signal.SIGKILL)
    wait_until(lambda: fleet.device("gw-1")["availability"] == "stopped", what="clean stop")  # type: ignore[index]
    wait_until(lambda: fleet.device("gw-2")["availability"] == "offline", what="last will")  # type: ignore[index]
