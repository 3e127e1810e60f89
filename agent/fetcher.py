"""Resumable, verified download of manifests and files in chunks over MQTT.

Up to ``window`` chunk requests are in flight at once, so a link with a long round trip (a cloud
broker, a cellular modem) still moves data at its bandwidth. Chunks that arrive out of order wait
in memory; only the contiguous prefix is appended to the partial file in the store, so a download
interrupted by a restart or an outage resumes exactly where it stopped.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

from agent.errors import FetchError
from protocol.messages import ChunkHeader, ChunkRequest

__all__ = ["ChunkFetcher"]

log = logging.getLogger(__name__)

Kind = Literal["manifest", "file"]


@dataclass
class _InFlight:
    offset: int
    sent_at: float
    attempts: int


class ChunkFetcher:
    def __init__(
        self,
        device_id: str,
        publish: Callable[[ChunkRequest], bool],
        *,
        chunk_bytes: int,
        timeout_s: float,
        retries: int,
        window: int = 8,
    ) -> None:
        self.device_id = device_id
        self._publish = publish
        self.chunk_bytes = chunk_bytes
        self.timeout_s = timeout_s
        self.retries = retries
        self.window = window
        self._inbox: queue.Queue[tuple[ChunkHeader, bytes]] | None = None
        self._lock = threading.Lock()
        self.bytes_received = 0

    def on_chunk(self, header: ChunkHeader, data: bytes) -> None:
        """Called from the MQTT thread; hands the chunk to the download in progress."""
        with self._lock:
            inbox = self._inbox
        if inbox is None:
            log.debug("chunk %s arrived with no download in progress (late duplicate)", header.request_id)
            return
        inbox.put((header, data))

    def fetch(self, kind: Kind, digest: str, partial: Path, stop: threading.Event) -> Path:
        """Complete ``partial`` from its current size to the artifact's end; return its path.

        The caller checks the hash of the result. Raises FetchError when the coordinator answers
        with an error or stops answering.
        """
        inbox: queue.Queue[tuple[ChunkHeader, bytes]] = queue.Queue()
        with self._lock:
            self._inbox = inbox
        try:
            with open(partial, "ab") as out:
                self._download(kind, digest, out, inbox, stop)
                out.flush()
                os.fsync(out.fileno())
        finally:
            with self._lock:
                self._inbox = None
        return partial

    def _download(
        self,
        kind: Kind,
        digest: str,
        fh: BinaryIO,
        inbox: queue.Queue[tuple[ChunkHeader, bytes]],
        stop: threading.Event,
    ) -> None:
        written = fh.tell()
        total: int | None = None
        next_offset = written
        in_flight: dict[str, _InFlight] = {}
        early: dict[int, bytes] = {}

        def send(offset: int, attempts: int) -> None:
            request = ChunkRequest(
                device_id=self.device_id, kind=kind, digest=digest, offset=offset, length=self.chunk_bytes
            )
            in_flight[request.message_id] = _InFlight(offset, time.monotonic(), attempts)
            if not self._publish(request):
                log.debug("chunk request at %s not sent (offline); will retry", offset)

        while total is None or written < total:
            if stop.is_set():
                raise FetchError("stopped")
            # Keep the window full; until the size is known, ask for the first chunk only.
            limit = next_offset + 1 if total is None else total
            while len(in_flight) < (1 if total is None else self.window) and next_offset < limit:
                send(next_offset, 1)
                next_offset += self.chunk_bytes
            try:
                header, data = inbox.get(timeout=0.2)
            except queue.Empty:
                self._resend_late(in_flight, send, kind, digest)
                continue
            slot = in_flight.pop(header.request_id, None)
            if slot is None or header.digest != digest:
                continue  # a late duplicate of a request already answered or re-sent
            if header.error is not None:
                raise FetchError(f"coordinator refused {kind} {digest[:12]}: {header.error}")
            if total is None:
                total = header.total_size
                if written > total:  # a stale partial file longer than the artifact
                    fh.truncate(0)
                    fh.seek(0)
                    written = next_offset = 0
                    in_flight.clear()
                    early.clear()
                    total = None
                    continue
            elif header.total_size != total:
                raise FetchError(f"{kind} {digest[:12]} changed size during download")
            if not data and header.offset < total:
                raise FetchError(f"empty chunk at offset {header.offset} of {total}")
            early[header.offset] = data
            while written in early:
                block = early.pop(written)
                fh.write(block)
                written += len(block)
                self.bytes_received += len(block)

    def _resend_late(
        self, in_flight: dict[str, _InFlight], send: Callable[[int, int], None], kind: Kind, digest: str
    ) -> None:
        now = time.monotonic()
        for request_id, slot in list(in_flight.items()):
            if now - slot.sent_at < self.timeout_s:
                continue
            del in_flight[request_id]
            if slot.attempts > self.retries:
                raise FetchError(
                    f"no answer for {kind} {digest[:12]} at offset {slot.offset} after {slot.attempts} tries"
                )
            log.info("chunk %s of %s %s not answered (try %d)", slot.offset, kind, digest[:12], slot.attempts)
            send(slot.offset, slot.attempts + 1)
