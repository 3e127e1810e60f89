"""One device selector for rollouts and campaigns: the same target picks the same devices."""

from __future__ import annotations

from pathlib import Path

from edgefleet.coordinator.rollouts.spec import RolloutSpec
from edgefleet.coordinator.store.sqlite import SQLiteStore
from edgefleet.coordinator.targets import TargetSelector, select_devices
from edgefleet.protocol.messages import ReportedState


def _store(tmp_path: Path) -> SQLiteStore:
    store = SQLiteStore(tmp_path / "fleet.db")
    for device, device_class in (("a", "rpi4"), ("b", "rpi4"), ("c", "rpi5")):
        store.record_reported(ReportedState(device_id=device, device_class=device_class, agent_version="t",
                                            status="ready", started_at="2026-01-01T00:00:00Z"))  # fmt: skip
    store.label_device("a", tags=["canary"], group="line-1")
    store.label_device("c", tags=["canary"], group=None)
    return store


def test_conditions_combine_and_an_explicit_device_list_is_exact(tmp_path: Path) -> None:
    store = _store(tmp_path)
    ids = lambda target: [d["device_id"] for d in select_devices(store, target)]  # noqa: E731
    assert ids(TargetSelector()) == ["a", "b", "c"]
    assert ids(TargetSelector(tag="canary")) == ["a", "c"]
    assert ids(TargetSelector(tag="canary", device_class="rpi4")) == ["a"]
    assert ids(TargetSelector(device_ids=["b", "c", "zz"])) == ["b", "c"]
    assert ids(TargetSelector(device_ids=[])) == []  # an empty list names no device, it does not mean all


def test_a_rollout_spec_names_its_devices_as_a_campaign_target_does(tmp_path: Path) -> None:
    store = _store(tmp_path)
    spec = RolloutSpec(model="m", version="1", device_class="rpi4", tag="canary", device_ids=["a", "b"])
    assert spec.target == TargetSelector(device_class="rpi4", tag="canary", device_ids=["a", "b"])
    assert [d["device_id"] for d in select_devices(store, spec.target)] == ["a"]
