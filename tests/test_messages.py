import json

import pytest

from edgefleet.protocol.errors import InvalidMessage
from edgefleet.protocol.messages import (
    MAX_CHUNK_BYTES,
    MAX_CONTROL_BYTES,
    BundleRef,
    ChunkHeader,
    ChunkRequest,
    DesiredState,
    Telemetry,
    decode_chunk,
    encode_chunk,
    parse,
)

DIGEST = "a" * 64


def test_desired_state_round_trips() -> None:
    desired = DesiredState(device_id="pi-01", revision=3, bundle=BundleRef(digest=DIGEST, name="m", version="1"))
    parsed = parse(DesiredState, desired.to_bytes())
    assert parsed == desired


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"not json", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[]", "DesiredState"),
        (json.dumps({"device_id": "a", "revision": -1}).encode(), "revision"),
        (json.dumps({"device_id": "a", "revision": 1, "surprise": 1}).encode(), "surprise"),
        (
            json.dumps({"schema_version": 9, "device_id": "a", "revision": 1}).encode(),
            "unsupported schema_version 9",
        ),
        (
            json.dumps(
                {"device_id": "a", "revision": 1, "bundle": {"digest": "zz", "name": "m", "version": "1"}}
            ).encode(),
            "digest",
        ),
    ],
)
def test_invalid_payloads_are_rejected_with_a_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(InvalidMessage, match=reason):
        parse(DesiredState, payload, topic="t")


def test_oversized_payload_is_rejected_before_parsing() -> None:
    with pytest.raises(InvalidMessage, match="exceeds"):
        parse(DesiredState, b"{" + b" " * MAX_CONTROL_BYTES + b"}")


def test_chunk_requests_are_bounded() -> None:
    with pytest.raises(Exception, match="length"):
        ChunkRequest(device_id="a", kind="file", digest=DIGEST, offset=0, length=MAX_CHUNK_BYTES + 1)


def test_chunk_framing_round_trips_binary_data() -> None:
    header = ChunkHeader(request_id="b" * 32, kind="file", digest=DIGEST, offset=10, total_size=100)
    data = bytes(range(256)) * 4
    got_header, got_data = decode_chunk(encode_chunk(header, data))
    assert got_header == header
    assert got_data == data


@pytest.mark.parametrize(
    "payload",
    [b"", b"\x00\x00", b"\x00\x00\xff\xff{}", b"\x00\x00\x00\x02{}", b"\x00\x00\x00\x03abc"],
)
def test_malformed_chunks_are_rejected(payload: bytes) -> None:
    with pytest.raises(InvalidMessage):
        decode_chunk(payload)


def test_chunk_with_error_and_data_is_rejected() -> None:
    header = ChunkHeader(request_id="b" * 32, kind="file", digest=DIGEST, offset=0, total_size=0, error="gone")
    with pytest.raises(InvalidMessage, match="both"):
        decode_chunk(encode_chunk(header, b"x"))


def test_campaign_assignment_needs_a_superlink_and_a_clean_campaign_id() -> None:
    from edgefleet.protocol.messages import CampaignAssignment

    joined = parse(
        CampaignAssignment, CampaignAssignment(device_id="a", campaign_id="c1", superlink="h:9092").to_bytes()
    )
    assert joined.superlink == "h:9092"
    assert parse(CampaignAssignment, b'{"device_id": "a"}').campaign_id is None  # leave every campaign
    for bad in (
        b'{"device_id": "a", "campaign_id": "c1"}',
        b'{"device_id": "a", "campaign_id": "../x", "superlink": "h:1"}',
    ):
        with pytest.raises(InvalidMessage):
            parse(CampaignAssignment, bad)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("rss_bytes", 2**70), ("disk_free_bytes", 2**63), ("outbox_pending", -1), ("outbox_pending", 2**62),
        ("latency_ms_p95", -1.0), ("latency_ms_p95", 1e300), ("window_s", 1e12), ("soc_temp_c", 5000.0),
        ("cpu_percent", 1e9), ("drift_score", -0.5), ("outbox_dropped", {"telemetry": 2**62}),
        ("drift_features", {f"x[{i}]": 1.0 for i in range(65)}),
    ],
)  # fmt: skip
def test_telemetry_beyond_what_a_device_can_report_is_refused_with_the_field(field: str, value: object) -> None:
    payload = json.dumps({"device_id": "d1", "window_s": 10, "inference_count": 1, "error_count": 0, field: value})
    with pytest.raises(InvalidMessage) as refused:
        parse(Telemetry, payload.encode())
    assert field in refused.value.reason


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_a_non_finite_figure_was_not_measured_but_a_non_finite_window_is_no_report(literal: str) -> None:
    fields = '"device_id": "d1", "inference_count": 1, "error_count": 0'
    report = parse(Telemetry, ("{" + fields + f', "window_s": 10, "latency_ms_p50": {literal}' + "}").encode())
    assert report.latency_ms_p50 is None
    with pytest.raises(InvalidMessage, match="window_s"):
        parse(Telemetry, ("{" + fields + f', "window_s": {literal}' + "}").encode())


def test_telemetry_at_every_bound_is_stored(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The bounds are within what the store holds: a report at all of them goes in and reads back."""
    from edgefleet.coordinator.store.sqlite import SQLiteStore
    from edgefleet.protocol import messages

    report = Telemetry(
        device_id="d1", window_s=messages.MAX_WINDOW_S, inference_count=messages.MAX_WINDOW_COUNT,
        error_count=messages.MAX_WINDOW_COUNT, latency_ms_p95=messages.MAX_LATENCY_MS, rss_bytes=messages.MAX_BYTES,
        disk_free_bytes=messages.MAX_BYTES, outbox_pending=messages.MAX_WINDOW_COUNT, cpu_percent=100.0 * 4096,
        drift_score=messages.MAX_PSI, outbox_dropped={"telemetry": messages.MAX_WINDOW_COUNT},
    )  # fmt: skip
    store = SQLiteStore(tmp_path / "fleet.db")
    assert store.add_telemetry(report)
    [row] = store.telemetry("d1")
    assert row["rss_bytes"] == messages.MAX_BYTES and row["inference_count"] == messages.MAX_WINDOW_COUNT
