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
