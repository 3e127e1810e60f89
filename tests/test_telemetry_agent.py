"""The agent's telemetry window: failures by kind as the local API records them, p99 latency, data disk usage."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import psutil
import pytest

from edgefleet.agent.serving.client import InferenceClient
from edgefleet.agent.serving.model import LoadedModel, load_model
from edgefleet.agent.serving.server import InferenceApi, InferenceService
from edgefleet.agent.telemetry.stats import OTHER_ERROR_KIND, InferenceStats, soc_temperature_c
from edgefleet.protocol import histogram
from edgefleet.protocol.bundle import Manifest, extract_bundle
from edgefleet.protocol.errors import InvalidMessage
from edgefleet.protocol.messages import MAX_ERROR_KINDS, Telemetry, parse
from tests.conftest import DigitsModels, Keys, build


@pytest.fixture
def served(tmp_path: Path, keys: Keys, digits: DigitsModels) -> Iterator[tuple[Any, ...]]:
    archive, digest = build(digits.v1, tmp_path / "b.bundle", keys, version="1")
    signed = extract_bundle(archive, tmp_path / "x")
    model = load_model(digest, Manifest.model_validate_json(signed.manifest), tmp_path / "x" / "model.onnx")
    holder: dict[str, LoadedModel | None] = {"model": None}
    stats = InferenceStats()
    server = InferenceApi(
        InferenceService(lambda: holder["model"], stats, "x86-gateway"),
        socket_path=tmp_path / "api.sock",
        tcp_port=None,
        max_message_bytes=1 << 20,
        workers=2,
    )
    server.start()
    yield server, holder, model, stats
    server.stop(0)


def test_a_predict_with_a_wrong_shape_is_counted_as_invalid_argument(served, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server, holder, model, stats = served
    with InferenceClient(f"unix://{server.socket_path}") as client:
        with pytest.raises(grpc.RpcError) as early:  # no model active yet
            client.predict({"pixels": np.zeros((1, 64), np.float32)})
        holder["model"] = model
        with pytest.raises(grpc.RpcError) as info:
            client.predict({"pixels": np.zeros((2, 63), np.float32)})
        for _ in range(3):
            client.predict({"pixels": np.zeros((1, 64), np.float32)})

    telemetry = stats.take("gw-1", model.digest, data_dir=tmp_path)
    after = stats.take("gw-1", model.digest)

    assert (early.value.code(), info.value.code()) == (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INVALID_ARGUMENT)
    assert telemetry.errors_by_kind == {"unavailable": 1, "invalid_argument": 1}
    assert (telemetry.error_count, telemetry.inference_count) == (1, 3)  # the wrong shape is the caller's error
    assert telemetry.latency_ms_p99 is not None and telemetry.latency_ms_p99 >= (telemetry.latency_ms_p95 or 0)
    assert (after.errors_by_kind, after.error_count) == ({}, 0)  # the next window starts empty
    assert parse(Telemetry, telemetry.to_bytes()).errors_by_kind == telemetry.errors_by_kind


def test_p99_and_the_data_disk_of_a_window(tmp_path: Path) -> None:
    stats = InferenceStats()
    for latency_ms in range(1, 101):
        stats.record(float(latency_ms))

    telemetry = stats.take("gw-1", None, data_dir=tmp_path)

    assert telemetry.latency_ms_p99 == pytest.approx(np.percentile(np.arange(1, 101), 99))
    usage = psutil.disk_usage(str(tmp_path))
    assert telemetry.disk_used_percent == pytest.approx(usage.percent, abs=1.0)
    assert telemetry.disk_free_bytes is not None and abs(telemetry.disk_free_bytes - usage.free) < 256 << 20
    bare = stats.take("gw-1", None)  # no data dir, no requests: the figures are absent, not zero
    assert (bare.disk_free_bytes, bare.disk_used_percent, bare.latency_ms_p99) == (None, None, None)
    missing = stats.take("gw-1", None, data_dir=tmp_path / "gone")  # unreadable: absent, the window still goes out
    assert missing.disk_free_bytes is None


def test_error_kinds_stay_within_the_message_limit() -> None:
    stats = InferenceStats()
    for i in range(MAX_ERROR_KINDS + 5):
        stats.record_error(f"kind_{i}")
    stats.record_error("kind_0")

    telemetry = stats.take("gw-1", None)

    assert len(telemetry.errors_by_kind) == MAX_ERROR_KINDS
    assert telemetry.errors_by_kind["kind_0"] == 2
    assert telemetry.errors_by_kind[OTHER_ERROR_KIND] == 6
    assert sum(telemetry.errors_by_kind.values()) == telemetry.error_count == MAX_ERROR_KINDS + 6


def test_a_telemetry_message_without_the_new_fields_still_parses() -> None:
    old = b'{"device_id": "gw-1", "window_s": 10, "inference_count": 4, "error_count": 1, "latency_ms_p95": 2.0}'

    telemetry = parse(Telemetry, old)

    assert (telemetry.errors_by_kind, telemetry.latency_ms_p99, telemetry.disk_free_bytes) == ({}, None, None)
    with pytest.raises(InvalidMessage, match="errors_by_kind"):
        parse(Telemetry, old[:-1] + b', "errors_by_kind": {"' + b"k" * 65 + b'": 1}}')


def _zone(root: Path, n: int, kind: str | None, millidegrees: str) -> None:
    zone = root / f"thermal_zone{n}"
    zone.mkdir(parents=True)
    (zone / "temp").write_text(millidegrees + "\n")
    if kind is not None:
        (zone / "type").write_text(kind + "\n")


def test_soc_temperature_is_the_hottest_zone_that_measures_the_chip(tmp_path: Path) -> None:
    # As a Jetson Xavier NX lays them out: PMIC-Die reads a fixed 100 C whatever the chip does.
    _zone(tmp_path, 0, "CPU-therm", "51500")
    _zone(tmp_path, 1, "GPU-therm", "48000")
    _zone(tmp_path, 2, "PMIC-Die", "100000")
    _zone(tmp_path, 3, "AUX-therm", "-273150")  # a zone with no sensor behind it
    _zone(tmp_path, 4, "thermal-fan-est", "not a number")
    assert soc_temperature_c(str(tmp_path / "thermal_zone*")) == 51.5

    pi = tmp_path / "pi"
    _zone(pi, 0, "cpu-thermal", "62300")
    _zone(pi, 1, None, "40000")  # an older kernel without the zone's type: still read
    assert soc_temperature_c(str(pi / "thermal_zone*")) == pytest.approx(62.3)
    assert soc_temperature_c(str(tmp_path / "none" / "thermal_zone*")) is None  # a VM: no zones, no figure


def test_a_window_carries_the_whole_devices_cpu_and_memory_beside_the_agents_own() -> None:
    stats = InferenceStats()
    process, before = psutil.Process(), sum(psutil.Process().cpu_times()[:2])
    while sum(process.cpu_times()[:2]) - before < 0.05:  # CPU the clock ticks can see, in the window
        sum(i * i for i in range(10_000))

    telemetry = stats.take("gw-1", None)

    assert telemetry.device_cpu_percent is not None and 0.0 <= telemetry.device_cpu_percent <= 100.0
    memory = psutil.virtual_memory().percent
    assert telemetry.memory_used_percent == pytest.approx(memory, abs=5.0)
    assert telemetry.rss_bytes == pytest.approx(psutil.Process().memory_info().rss, rel=0.2)
    assert telemetry.cpu_percent is not None and telemetry.cpu_percent > 0.0  # the agent process's own
    impossible = json.loads(telemetry.to_bytes()) | {"memory_used_percent": 1000.0}
    with pytest.raises(InvalidMessage, match="memory_used_percent"):
        parse(Telemetry, json.dumps(impossible).encode())


def test_a_window_counts_every_request_in_the_shared_latency_buckets() -> None:
    rng = np.random.default_rng(3)
    latencies = rng.lognormal(mean=0.5, sigma=0.8, size=5000)  # ms
    stats = InferenceStats(max_samples=1000)  # samples stop at 1000; the histogram counts all
    for latency_ms in latencies:
        stats.record(float(latency_ms))

    telemetry = parse(Telemetry, stats.take("gw-1", None).to_bytes())  # as the coordinator receives it

    assert sum(telemetry.latency_histogram.values()) == telemetry.inference_count == 5000
    expected = np.bincount([histogram.bucket_of(x) for x in latencies], minlength=histogram.BUCKETS)
    assert telemetry.latency_histogram == {b: int(n) for b, n in enumerate(expected) if n}
    for q, estimate in zip(
        (50, 95, 99), histogram.quantiles(telemetry.latency_histogram, (0.5, 0.95, 0.99)), strict=True
    ):
        exact = float(np.percentile(latencies, q))
        assert estimate is not None and abs(estimate - exact) <= 0.25 * exact, (q, estimate, exact)
        assert histogram.bucket_of(estimate) == histogram.bucket_of(exact)
    assert stats.take("gw-1", None).latency_histogram == {}, "the next window starts empty"
    with pytest.raises(InvalidMessage, match="latency_histogram"):
        parse(Telemetry, b'{"device_id": "gw-1", "window_s": 1, "inference_count": 1, "error_count": 0, '
                         b'"latency_histogram": {"72": 1}}')  # fmt: skip


def test_histogram_quantiles_interpolate_inside_a_bucket_and_saturate_at_the_ends() -> None:
    b = histogram.bucket_of(10.0)
    lower, upper = histogram.BOUNDS_MS[b - 1], histogram.BOUNDS_MS[b]
    assert lower < 10.0 <= upper
    assert histogram.quantiles({b: 4}, (0.25, 1.0)) == [pytest.approx(lower + (upper - lower) / 4), upper]
    assert histogram.quantiles({}, (0.5,)) == [None]
    assert histogram.quantiles({histogram.BUCKETS - 1: 3}, (0.99,)) == [histogram.BOUNDS_MS[-1]]  # over a minute
    assert histogram.bucket_of(0.0) == histogram.bucket_of(-1.0) == histogram.bucket_of(float("nan")) == 0


def test_counts_by_bucket_or_kind_cannot_exceed_the_windows_own_counts() -> None:
    base = b'{"device_id": "gw-1", "window_s": 1, "inference_count": 5, "error_count": 2'
    assert parse(Telemetry, base + b', "latency_histogram": {"3": 5}, "errors_by_kind": {"runtime": 2}}')
    with pytest.raises(InvalidMessage, match="more requests than inference_count"):
        parse(Telemetry, base + b', "latency_histogram": {"3": 4, "9": 2}}')
    with pytest.raises(InvalidMessage, match="more failures than error_count"):
        parse(Telemetry, base + b', "errors_by_kind": {"runtime": 3}}')
    with pytest.raises(InvalidMessage, match="inference_count"):  # SQLite adds counts up in 64-bit integers
        parse(Telemetry, base.replace(b'"inference_count": 5', b'"inference_count": 9223372036854775807') + b"}")
