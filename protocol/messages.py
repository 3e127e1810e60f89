"""Every MQTT payload as a versioned pydantic model, with size limits and strict parsing."""

from __future__ import annotations

import json
import math
import struct
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator, model_validator

from edgefleet.protocol import histogram
from edgefleet.protocol.errors import InvalidMessage, describe_errors

__all__ = [
    "CLIENT_ERROR_KINDS",
    "MAX_CHUNK_BYTES",
    "MAX_CONTROL_BYTES",
    "MAX_ERROR_KINDS",
    "MAX_PUBLIC_KEY_CHARS",
    "MAX_WINDOW_COUNT",
    "Availability",
    "BundleRef",
    "CampaignAssignment",
    "ChunkHeader",
    "ChunkRequest",
    "Command",
    "CommandResult",
    "CoordinatorStatus",
    "DesiredState",
    "ErrorInfo",
    "FailureKind",
    "Message",
    "ReportedState",
    "Telemetry",
    "decode_chunk",
    "encode_chunk",
    "parse",
    "sent_by",
]

SCHEMA_VERSION: Literal[1] = 1
MAX_CONTROL_BYTES = 64 * 1024  # any JSON message
MAX_CHUNK_BYTES = 256 * 1024  # data in one chunk; well under Mosquitto's 2 MB and AWS IoT's 128 KB at default 64 KiB
SHA256 = r"^[0-9a-f]{64}$"
MAX_ERROR_KINDS = 16  # distinct error kinds in one telemetry window
# Requests counted in one telemetry window, at most (a million a second for twelve days): the coordinator
# adds counts up in SQLite, whose integers end at 2**63.
MAX_WINDOW_COUNT = 2**40
# Physical bounds of a device's figures (telemetry): far above any real device, far below SQLite's 2**63.
MAX_WINDOW_S = 86_400.0  # a window of a day at most
MAX_LATENCY_MS = 3_600_000.0  # an hour per request
MAX_BYTES = 2**56  # 64 PiB of memory or disk
MAX_CORES = 4096
MAX_PSI = 1_000.0  # PSI of fully disjoint distributions over the agent's bins stays far below this
MAX_PUBLIC_KEY_CHARS = 1024  # a P-521 public key in PEM is ~270 characters
ErrorKind = Annotated[str, StringConstraints(min_length=1, max_length=64)]
# Failed requests that are the caller's doing (a tensor the model refuses, too many requests or sequences at once,
# a sequence that is not live): listed in
# errors_by_kind, left out of error_count, so that they never count against a bundle in rollout gates and alerts.
CLIENT_ERROR_KINDS = frozenset({"invalid_argument", "resource_exhausted", "failed_precondition"})


def _now() -> datetime:
    return datetime.now(UTC)


def _new_id() -> str:
    return uuid.uuid4().hex


class Message(BaseModel):
    """Common envelope: schema version, a unique id (for de-duplication) and the sending time."""

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = SCHEMA_VERSION
    message_id: str = Field(default_factory=_new_id, pattern=r"^[0-9a-f]{32}$")
    sent_at: datetime = Field(default_factory=_now)

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()


class BundleRef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    digest: str = Field(pattern=SHA256, description="sha256 of the bundle's signed manifest bytes.")
    name: str = Field(max_length=128)
    version: str = Field(max_length=64)


class FailureKind(StrEnum):
    """What went wrong with a bundle on a device; the coordinator decides by this, never by the text."""

    DOWNLOAD = "download"  # it could not be fetched yet; the agent tries again
    REFUSED = "refused"  # fetched and refused: signature, files, device class, load or test vectors
    REVERTED = "reverted"  # it was active and the device went back to the previous bundle (crash loop)
    UNUSABLE = "unusable"  # a stored bundle that no longer verifies or loads after a restart
    FEDERATED = "federated"  # taking part in a campaign failed (not about a bundle)


class ErrorInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(max_length=2000)
    kind: FailureKind | None = Field(default=None, description="What failed; None from agents before it existed.")
    bundle_digest: str | None = None
    at: datetime = Field(default_factory=_now)


class DesiredState(Message):
    """What the coordinator wants a device to run. Retained; ``revision`` only grows.

    Signed by the coordinator's command key (protocol/control.py) where the coordinator has one; an agent
    with command keys acts only on a signed one that has not expired.
    """

    device_id: str
    revision: int = Field(ge=0, le=2**53)
    bundle: BundleRef | None = None
    expires_at: datetime | None = Field(
        default=None, description="After this the device waits for a fresh one (the coordinator re-signs in time)."
    )
    allow_downgrade: bool = Field(
        default=False,
        description="The bundle may be older than the active bundle's min_version (an operator's explicit rollback).",
    )


class CampaignAssignment(Message):
    """The federated campaign a device takes part in (retained). ``campaign_id`` None: take part in none.

    The device runs a Flower SuperNode against ``superlink`` (host:port of the SuperLink's Fleet API)
    that trains on its labelled samples while the assignment stands.
    """

    device_id: str
    campaign_id: str | None = Field(default=None, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    superlink: str | None = Field(default=None, max_length=255, pattern=r"^[A-Za-z0-9_.:\[\]-]+:[0-9]{1,5}$")
    root_certificate: str | None = Field(
        default=None, max_length=16_384, description="PEM CA of the SuperLink's TLS; None: insecure (loopback/VPN)."
    )
    node_auth: bool = Field(
        default=False,
        description="The SuperLink admits only SuperNodes whose key the coordinator registered: start the "
        "SuperNode with the device's SuperNode key (the one in ReportedState.supernode_public_key). Needs TLS.",
    )
    expires_at: datetime | None = Field(default=None, description="After this the device ignores it (as DesiredState).")

    @model_validator(mode="after")
    def _complete(self) -> CampaignAssignment:
        if self.campaign_id is not None and self.superlink is None:
            raise ValueError("a campaign assignment needs the SuperLink address")
        if self.node_auth and self.root_certificate is None:
            raise ValueError(
                "node_auth needs the SuperLink's root_certificate (Flower authenticates nodes over TLS only)"
            )
        return self


class CoordinatorStatus(Message):
    """Whether the coordinator is connected and subscribed (retained; its last will says offline)."""

    state: Literal["online", "offline"]


class ReportedState(Message):
    """What the device runs and how it got there. Retained."""

    device_id: str
    device_class: str
    agent_version: str
    status: Literal["starting", "idle", "downloading", "activating", "waiting_for_lock", "ready", "error"]
    active: BundleRef | None = None
    previous: BundleRef | None = None
    desired_revision: int | None = None
    runtime: str | None = None
    runtime_skipped: list[str] = Field(default_factory=list, description="Why each earlier runtime was passed over.")
    last_error: ErrorInfo | None = None
    rejected_messages: int = 0
    training_samples: int | None = Field(default=None, ge=0, description="Labelled samples stored for campaigns.")
    campaign: str | None = Field(default=None, description="Campaign whose SuperNode runs now, if any.")
    supernode_public_key: str | None = Field(
        default=None,
        max_length=MAX_PUBLIC_KEY_CHARS,
        pattern=r"^-----BEGIN PUBLIC KEY-----\r?\n[A-Za-z0-9+/=\r\n]+-----END PUBLIC KEY-----\r?\n?$",
        description="PEM (SubjectPublicKeyInfo) EC public key of the device's SuperNode; the coordinator registers "
        "it with a campaign's SuperLink when that SuperLink authenticates nodes. None: federated campaigns are off.",
    )
    started_at: datetime


class Availability(Message):
    """``online`` on connect, ``offline`` as the last will, ``stopped`` on a clean shutdown. Retained."""

    device_id: str
    state: Literal["online", "offline", "stopped"]


class Telemetry(Message):
    """Inference counters over one reporting window.

    Every figure is bounded by what a device can physically report (and so by what the store holds):
    a value past its bound is no report, refused with the reason, never stored. An optional figure
    that is NaN or infinite was not measured and counts as absent.
    """

    device_id: str
    window_s: float = Field(ge=0, le=MAX_WINDOW_S)
    bundle_digest: str | None = None
    runtime: str | None = None
    runtime_skipped: list[str] = Field(default_factory=list)
    inference_count: int = Field(ge=0, le=MAX_WINDOW_COUNT)
    error_count: int = Field(
        ge=0, le=MAX_WINDOW_COUNT, description="Requests that failed on the device's side (client errors left out)."
    )
    latency_ms_mean: float | None = Field(default=None, ge=0, le=MAX_LATENCY_MS)
    latency_ms_p50: float | None = Field(default=None, ge=0, le=MAX_LATENCY_MS)
    latency_ms_p95: float | None = Field(default=None, ge=0, le=MAX_LATENCY_MS)
    latency_ms_p99: float | None = Field(
        default=None, ge=0, le=MAX_LATENCY_MS, description="99th percentile latency of the window, in ms."
    )
    latency_histogram: dict[Annotated[int, Field(ge=0, lt=histogram.BUCKETS)], Annotated[int, Field(ge=0)]] = Field(
        default_factory=dict,
        max_length=histogram.BUCKETS,
        description="Requests per latency bucket of protocol/histogram.py (bucket index -> count; empty buckets "
        "left out): what minute, hour and fleet percentiles are made of. Adds up to inference_count at most.",
    )
    errors_by_kind: dict[ErrorKind, Annotated[int, Field(ge=0)]] = Field(
        default_factory=dict,
        max_length=MAX_ERROR_KINDS,
        description="Failed requests per kind (e.g. invalid_argument, unavailable, runtime); the kinds that are not "
        "client errors (CLIENT_ERROR_KINDS) add up to error_count.",
    )

    @field_validator(
        "latency_ms_mean", "latency_ms_p50", "latency_ms_p95", "latency_ms_p99", "disk_used_percent", "cpu_percent",
        "soc_temp_c", "device_cpu_percent", "memory_used_percent", "drift_score", "confidence_drift_score",
        mode="before",
    )  # fmt: skip
    @classmethod
    def _absent_if_not_finite(cls, value: object) -> object:
        return None if isinstance(value, float) and not math.isfinite(value) else value

    @model_validator(mode="after")
    def _counts_add_up(self) -> Telemetry:
        # What the coordinator adds up per bucket stays within the window's own counts (and so within SQLite's
        # integers): a histogram of more requests than were served, or more errors by kind than errors, is no report.
        if sum(self.latency_histogram.values()) > self.inference_count:
            raise ValueError("latency_histogram counts more requests than inference_count")
        if sum(n for k, n in self.errors_by_kind.items() if k not in CLIENT_ERROR_KINDS) > self.error_count:
            raise ValueError("errors_by_kind counts more failures than error_count")
        if any(n > MAX_WINDOW_COUNT for n in self.errors_by_kind.values()):
            raise ValueError(f"errors_by_kind counts more than {MAX_WINDOW_COUNT} failures of one kind")
        return self

    disk_free_bytes: int | None = Field(
        default=None, ge=0, le=MAX_BYTES, description="Free bytes on the data dir's filesystem."
    )
    disk_used_percent: float | None = Field(
        default=None, ge=0, le=100, description="Used share of the data dir's filesystem, in percent."
    )
    cpu_percent: float | None = Field(
        default=None, ge=0, le=100 * MAX_CORES, description="The agent process's CPU use, percent of one core."
    )
    rss_bytes: int | None = Field(
        default=None, ge=0, le=MAX_BYTES, description="The agent process's resident memory."
    )
    soc_temp_c: float | None = Field(
        default=None, ge=-100, le=300, description="The hottest plausible thermal zone, in Celsius."
    )
    device_cpu_percent: float | None = Field(
        default=None, ge=0, le=100, description="The whole device's CPU use over the window, percent of all cores."
    )
    memory_used_percent: float | None = Field(
        default=None, ge=0, le=100, description="The device's memory in use, percent (psutil's virtual_memory)."
    )
    drift_score: float | None = Field(
        default=None,
        ge=0,
        le=MAX_PSI,
        description="Mean PSI of the inputs against the reference (256 evenly spread features at most).",
    )
    confidence_drift_score: float | None = Field(
        default=None, ge=0, le=MAX_PSI, description="PSI of the output's per-row top confidence against the reference."
    )
    drift_alert: bool = Field(default=False, description="Input or confidence drift is over the agent's threshold.")
    drift_features: dict[Annotated[str, Field(max_length=256)], Annotated[float, Field(ge=0, le=MAX_PSI)]] = Field(
        default_factory=dict, max_length=64, description="The most drifted features."
    )
    outbox_pending: int | None = Field(
        default=None, ge=0, le=MAX_WINDOW_COUNT, description="Messages waiting to be sent."
    )
    outbox_dropped: dict[Annotated[str, Field(max_length=64)], Annotated[int, Field(ge=0, le=MAX_WINDOW_COUNT)]] = (
        Field(default_factory=dict, max_length=32, description="Messages evicted, per channel.")
    )


class Command(Message):
    device_id: str
    name: Literal["ping", "report_state"]
    args: dict[str, Any] = Field(default_factory=dict)


class CommandResult(Message):
    device_id: str
    command_id: str
    ok: bool
    detail: str = Field(default="", max_length=4000)


class ChunkRequest(Message):
    """Ask for ``length`` bytes at ``offset`` of a signed manifest (by bundle digest) or a file (by sha256)."""

    device_id: str
    kind: Literal["manifest", "file"]
    digest: str = Field(pattern=SHA256)
    offset: int = Field(ge=0)
    length: int = Field(gt=0, le=MAX_CHUNK_BYTES)


class ChunkHeader(BaseModel):
    """Header of a binary chunk message; the data follows it. ``error`` set means no data."""

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = SCHEMA_VERSION
    request_id: str = Field(pattern=r"^[0-9a-f]{32}$")
    kind: Literal["manifest", "file"]
    digest: str = Field(pattern=SHA256)
    offset: int = Field(ge=0)
    total_size: int = Field(ge=0)
    error: str | None = Field(default=None, max_length=2000)


M = TypeVar("M", bound=BaseModel)


def parse(
    model: type[M], payload: bytes | bytearray, *, topic: str | None = None, max_bytes: int = MAX_CONTROL_BYTES
) -> M:
    """Validate a JSON payload into ``model``, raising InvalidMessage with the first reason."""
    if len(payload) > max_bytes:
        raise InvalidMessage(f"{model.__name__}: payload of {len(payload)} bytes exceeds {max_bytes}", topic=topic)
    try:  # pydantic's own JSON parser: ~4x faster than json.loads + model_validate on telemetry
        return model.model_validate_json(payload)
    except ValidationError:
        pass  # rare: the path below finds the reason to give, or accepts what only json.loads reads
    try:
        raw = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidMessage(f"{model.__name__}: not JSON ({exc})", topic=topic) from None
    if isinstance(raw, dict) and raw.get("schema_version") not in (None, SCHEMA_VERSION):
        raise InvalidMessage(
            f"{model.__name__}: unsupported schema_version {raw.get('schema_version')!r} "
            f"(this side speaks {SCHEMA_VERSION})",
            topic=topic,
        )
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise InvalidMessage(f"{model.__name__}: {describe_errors(exc)[0]}", topic=topic) from None


class _FromDevice(Protocol):
    device_id: str


D = TypeVar("D", bound=_FromDevice)


def sent_by(message: D, device_id: str) -> D:
    """``message`` if its payload names the device of its topic: a device may speak only for itself."""
    if message.device_id != device_id:
        raise InvalidMessage(f"payload names device {message.device_id!r} on the topic of {device_id!r}")
    return message


_LEN = struct.Struct(">I")


def encode_chunk(header: ChunkHeader, data: bytes) -> bytes:
    """Binary framing: 4-byte big-endian header length, header JSON, raw data."""
    if len(data) > MAX_CHUNK_BYTES:
        raise ValueError(f"chunk of {len(data)} bytes exceeds {MAX_CHUNK_BYTES}")
    head = header.model_dump_json().encode()
    return _LEN.pack(len(head)) + head + data


def decode_chunk(payload: bytes | bytearray, *, topic: str | None = None) -> tuple[ChunkHeader, bytes]:
    if len(payload) < _LEN.size:
        raise InvalidMessage("chunk: shorter than its length prefix", topic=topic)
    (head_len,) = _LEN.unpack_from(payload)
    if head_len > 4096 or _LEN.size + head_len > len(payload):
        raise InvalidMessage(f"chunk: bad header length {head_len}", topic=topic)
    header = parse(ChunkHeader, payload[_LEN.size : _LEN.size + head_len], topic=topic, max_bytes=4096)
    data = bytes(payload[_LEN.size + head_len :])
    if len(data) > MAX_CHUNK_BYTES:
        raise InvalidMessage(f"chunk: {len(data)} bytes of data exceed {MAX_CHUNK_BYTES}", topic=topic)
    if header.error is not None and data:
        raise InvalidMessage("chunk: carries both an error and data", topic=topic)
    return header, data
