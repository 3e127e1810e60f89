"""Resumable, verified download of manifests and files in chunks over MQTT.

The fetcher asks for one chunk at a time and appends it to a partial file in the store, so a
download interrupted by a restart or an outage resumes where it stopped.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from agent.errors import FetchError
from protocol.messages import ChunkHeader, ChunkRequest

__all__ = ["ChunkFetcher"]

log = logging.getLogger(__name__)

Kind = Literal["manifest", "file"]


class ChunkFetcher:
    def __init__(
        self,
        device_id: str,
        publish: Callable[[ChunkRequest], bool],
        *,
        chunk_bytes: int,
        timeout_s: float,
        retries: int,
    ) -> None:
        self.device_id = device_id
        self._publish = publish
        self.chunk_bytes = chunk_bytes
        self.timeout_s = timeout_s
        self.retries = retries
        self._waiting: dict[str, queue.Queue[tuple[ChunkHeader, bytes]]] = {}
        self._lock = threading.Lock()
        self.bytes_received = 0

    def on_chunk(self, header: ChunkHeader, data: bytes) -> None:
        """Called from the MQTT thread; hands the chunk to the request that waits for it."""
        with self._lock:
            slot = self._waiting.get(header.request_id)
        if slot is None:
            log.debug("chunk for request %s that nobody waits for (late duplicate)", header.request_id)
            return
        slot.put((header, data))

    def fetch(self, kind: Kind, digest: str, partial: Path, stop: threading.Event) -> Path:
        """Complete ``partial`` from its current size to the artifact's end; return its path.

        The caller checks the hash of the result. Raises FetchError when the coordinator answers
        with an error or stops answering.
        """
        offset = partial.stat().st_size if partial.exists() else 0
        total: int | None = None
        with open(partial, "ab") as out:
            while total is None or offset < total:
                if stop.is_set():
                    raise FetchError("stopped")
                header, data = self._request(kind, digest, offset, stop)
                if header.error is not None:
                    raise FetchError(f"coordinator refused {kind} {digest[:12]}: {header.error}")
                if total is None:
                    total = header.total_size
                    if offset > total:  # a stale partial file longer than the artifact
                        out.truncate(0)
                        offset = 0
                        continue
                elif header.total_size != total:
                    raise FetchError(f"{kind} {digest[:12]} changed size during download")
                if not data and offset < total:
                    raise FetchError(f"empty chunk at offset {offset} of {total}")
                out.write(data)
                offset += len(data)
                self.bytes_received += len(data)
            out.flush()
            os.fsync(out.fileno())
        return partial

    def _request(self, kind: Kind, digest: str, offset: int, stop: threading.Event) -> tuple[ChunkHeader, bytes]:
        for attempt in range(self.retries + 1):
            request = ChunkRequest(
                device_id=self.device_id, kind=kind, digest=digest, offset=offset, length=self.chunk_bytes
            )
            slot: queue.Queue[tuple[ChunkHeader, bytes]] = queue.Queue()
            with self._lock:
                self._waiting[request.message_id] = slot
            try:
                if self._publish(request):
                    try:
                        header, data = slot.get(timeout=self.timeout_s)
                    except queue.Empty:
                        pass
                    else:
                        if header.offset == offset and header.digest == digest:
                            return header, data
                        log.warning("chunk answer for offset %s, asked %s; asking again", header.offset, offset)
                if stop.wait(min(2.0**attempt * 0.1, self.timeout_s)):
                    raise FetchError("stopped")
                log.info("chunk %s of %s %s not answered (try %d)", offset, kind, digest[:12], attempt + 1)
            finally:
                with self._lock:
                    self._waiting.pop(request.message_id, None)
        raise FetchError(f"no answer for {kind} {digest[:12]} at offset {offset} after {self.retries + 1} tries")
