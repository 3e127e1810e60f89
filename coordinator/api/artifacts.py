"""HTTP mirror of bundle artifacts: signed manifests and files by digest, with Range requests.

The same bytes the MQTT link serves in chunks, for devices that can reach the API. Content is
addressed by hash and the agent verifies hash and signature, so the bytes need no secrecy; whether
the routes need a token anyway is ``[api] public_artifacts`` (see coordinator/config.py).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from typing import Literal

from fastapi import APIRouter, Header, Path
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import Counter

from edgefleet.coordinator.registry.artifacts import Registry

__all__ = ["artifact_router", "parse_range"]

BLOCK_BYTES = 1 << 20

HTTP_REQUESTS = Counter(
    "edgefleet_coordinator_http_artifact_requests", "Artifact downloads over HTTP", ["kind", "status"]
)
HTTP_BYTES = Counter(
    "edgefleet_coordinator_http_artifact_bytes_served", "Artifact bytes sent to devices over HTTP", ["kind"]
)

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """The one byte range ``[start, end]`` (inclusive) that ``header`` asks for; None if unsatisfiable.

    Only a single range is supported: a device resumes one partial file, it never asks for pieces.
    """
    match = _RANGE.match(header.strip())
    if match is None:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:  # a suffix: the last N bytes
        length = int(last)
        if length == 0 or size == 0:
            return None
        return max(0, size - length), size - 1
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or end < start:
        return None
    return start, end


def _stream(path: os.PathLike[str], start: int, length: int, kind: str) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        fh.seek(start)
        while length > 0:
            block = fh.read(min(BLOCK_BYTES, length))
            if not block:
                return
            length -= len(block)
            HTTP_BYTES.labels(kind).inc(len(block))
            yield block


def artifact_router(registry: Registry) -> APIRouter:
    router = APIRouter(prefix="/api/v1/artifacts", tags=["artifacts"])

    @router.get("/{kind}/{digest}", response_class=Response)
    def get_artifact(
        kind: Literal["manifest", "file"],
        digest: str = Path(pattern=r"^[0-9a-f]{64}$", description="Bundle digest (manifest) or file sha256."),
        range_: str | None = Header(
            default=None, alias="range", description="One byte range, e.g. 'bytes=1024-' to resume a download."
        ),
    ) -> Response:
        """The bytes of a signed manifest or a bundle file; `Range` resumes a partial download."""
        path = registry.artifact_path(kind, digest)
        size = path.stat().st_size
        headers = {"ETag": f'"{digest}"', "Accept-Ranges": "bytes"}
        if range_ is None:
            HTTP_REQUESTS.labels(kind, "200").inc()
            headers["Content-Length"] = str(size)
            return StreamingResponse(
                _stream(path, 0, size, kind), media_type="application/octet-stream", headers=headers
            )
        span = parse_range(range_, size)
        if span is None:
            HTTP_REQUESTS.labels(kind, "416").inc()
            return JSONResponse(
                status_code=416,
                content={"detail": f"range {range_!r} cannot be served from {size} bytes (one range, bytes=START-END)"},
                headers={"Content-Range": f"bytes */{size}"} | headers,
            )
        start, end = span
        HTTP_REQUESTS.labels(kind, "206").inc()
        headers |= {"Content-Range": f"bytes {start}-{end}/{size}", "Content-Length": str(end - start + 1)}
        return StreamingResponse(
            _stream(path, start, end - start + 1, kind),
            status_code=206,
            media_type="application/octet-stream",
            headers=headers,
        )

    return router
