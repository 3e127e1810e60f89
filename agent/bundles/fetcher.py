"""Resumable, verified download of manifests and files: from an HTTP mirror if one is set, else in
chunks over MQTT.

Up to ``window`` chunk requests are in flight at once, so a link with a long round trip (a cloud
broker, a cellular modem) still moves data at its bandwidth. Chunks that arrive out of order wait
in memory; only the contiguous prefix is appended to the partial file in the store, so a download
interrupted by a restart or an outage resumes exactly where it stopped.

An HTTP mirror writes into the same partial file (resuming it with a Range request) and hands the
result on only once it hashes to the digest asked for. When the mirror fails for any reason the
artifact comes over MQTT instead; a prefix the mirror left behind is kept, but checked once the
chunks complete it, and the artifact is fetched again whole over MQTT if it does not verify.
"""

from __future__ import annotations

import http.client
import logging
import os
import queue
import re
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Literal

from edgefleet.agent.errors import FetchError
from edgefleet.protocol.bundle import BundleError, SignedManifest, sha256_file
from edgefleet.protocol.messages import ChunkHeader, ChunkRequest

if TYPE_CHECKING:
    from edgefleet.agent.config import FetchConfig

__all__ = ["ChunkFetcher", "HttpMirror", "MirrorError", "verify_artifact"]

log = logging.getLogger(__name__)

Kind = Literal["manifest", "file"]


@dataclass
class _InFlight:
    offset: int
    sent_at: float
    attempts: int


def verify_artifact(kind: Kind, digest: str, path: Path) -> str | None:
    """Why the bytes at ``path`` are not the artifact ``digest`` names, or None when they are.

    A file's digest is the sha256 of its bytes; a manifest's is the sha256 of the manifest text
    inside the signed envelope (protocol/bundle.py), so the envelope is parsed to check it.
    """
    if kind == "file":
        actual = sha256_file(path)
    else:
        try:
            actual = SignedManifest.from_bytes(path.read_bytes()).digest
        except BundleError as exc:
            return exc.reason
    return None if actual == digest else f"hashes to {actual[:12]}, expected {digest[:12]}"


class MirrorError(FetchError):
    """The HTTP mirror could not deliver an artifact; the fetcher falls back to MQTT chunks."""


_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+)$")
_UNSATISFIED = re.compile(r"^bytes \*/(\d+)$")


class HttpMirror:
    """Downloads artifacts from ``<base_url>/api/v1/artifacts/{kind}/{digest}`` into a partial file."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float,
        ca_file: Path | None = None,
        token_file: Path | None = None,
        block_bytes: int = 256 * 1024,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.token_file = token_file
        self.block_bytes = block_bytes
        self._context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        self.bytes_received = 0

    @classmethod
    def from_config(cls, config: FetchConfig) -> HttpMirror | None:
        if config.http_mirror is None:
            return None
        return cls(
            config.http_mirror,
            timeout_s=config.http_timeout_s,
            ca_file=config.http_ca_file,
            token_file=config.http_token_file,
        )

    def fetch(self, kind: Kind, digest: str, partial: Path, stop: threading.Event, *, url: str | None = None) -> None:
        """Complete ``partial`` from the coordinator's artifact API (or ``url``) and verify it; raises
        MirrorError (partial kept if it may resume)."""
        url = url or f"{self.base_url}/api/v1/artifacts/{kind}/{digest}"
        for _attempt in range(2):  # a second pass only after a stale partial file was discarded
            start = partial.stat().st_size if partial.exists() else 0
            try:
                complete = self._download(url, partial, start, stop)
            except urllib.error.HTTPError as exc:
                raise MirrorError(f"{url}: HTTP {exc.code} {exc.reason}") from None
            except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
                reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
                raise MirrorError(f"{url}: {reason}") from None
            if complete:
                break
        else:
            raise MirrorError(f"{url}: the mirror keeps refusing the range of a fresh download")
        problem = verify_artifact(kind, digest, partial)
        if problem is not None:
            partial.unlink(missing_ok=True)
            raise MirrorError(f"{url}: downloaded {kind} {problem}; discarded")

    def _download(self, url: str, partial: Path, start: int, stop: threading.Event) -> bool:
        """Append the rest of the artifact to ``partial``; False when the partial was stale and discarded."""
        request = urllib.request.Request(url, headers={"Range": f"bytes={start}-"} if start else {})
        if self.token_file is not None:  # unredirected: a redirect to another host does not get the token
            request.add_unredirected_header("Authorization", f"Bearer {self.token_file.read_text().strip()}")
        try:
            response = urllib.request.urlopen(request, timeout=self.timeout_s, context=self._context)
        except urllib.error.HTTPError as exc:
            if exc.code != 416 or not start:
                raise
            exc.close()
            size = _UNSATISFIED.match(exc.headers.get("Content-Range", ""))
            if size is not None and int(size.group(1)) == start:
                return True  # the partial file is complete already (stopped before it was committed)
            partial.unlink(missing_ok=True)  # longer than the artifact: not a prefix of it
            return False
        with response:
            append = start > 0 and response.status == 206
            if append:
                span = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
                if span is None or int(span.group(1)) != start:
                    raise MirrorError(f"{url}: asked for bytes from {start}, got {response.headers['Content-Range']}")
            elif response.status != 200:
                raise MirrorError(f"{url}: unexpected HTTP {response.status}")
            with open(partial, "ab" if append else "wb") as out:
                while block := response.read(self.block_bytes):
                    if stop.is_set():
                        raise FetchError("stopped")
                    out.write(block)
                    self.bytes_received += len(block)
                out.flush()
                os.fsync(out.fileno())
        return True


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
        mirror: HttpMirror | None = None,
    ) -> None:
        self.device_id = device_id
        self.mirror = mirror
        # The manifest's own mirror URLs: public by design (content is checked by hash), system CAs.
        self._public = HttpMirror("", timeout_s=mirror.timeout_s if mirror else 30.0)
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

    def fetch(
        self, kind: Kind, digest: str, partial: Path, stop: threading.Event, *, mirrors: Sequence[str] = ()
    ) -> Path:
        """Complete ``partial`` from its current size to the artifact's end; return its path.

        Sources in order: the signed manifest's ``mirrors`` (URL templates, files only), the configured
        HTTP mirror, MQTT chunks. The caller checks the hash of the result. Raises FetchError when the
        coordinator answers with an error or stops answering.
        """
        started = time.monotonic()
        untrusted_prefix = False
        sources: list[tuple[HttpMirror, str | None, str]] = [
            (self._public, t.replace("{sha256}", digest), "manifest mirror") for t in mirrors
        ]
        if self.mirror is not None:
            sources.append((self.mirror, None, "HTTP mirror"))
        for client, url, label in sources:
            try:
                client.fetch(kind, digest, partial, stop, url=url)
            except MirrorError as exc:
                log.warning("%s failed for %s %s: %s", label, kind, digest[:12], exc.reason)
                untrusted_prefix = untrusted_prefix or (partial.exists() and partial.stat().st_size > 0)
            else:
                log.info(
                    "fetched %s %s over HTTP from %s: %d bytes in %.2fs",
                    kind, digest[:12], url or f"the {label}", partial.stat().st_size, time.monotonic() - started,
                )  # fmt: skip
                return partial
        if sources:
            log.warning("no HTTP source delivered %s %s; fetching it over MQTT", kind, digest[:12])
        self._fetch_chunks(kind, digest, partial, stop)
        if untrusted_prefix and verify_artifact(kind, digest, partial) is not None:
            log.warning("%s %s did not verify after the mirror failed; fetching it whole over MQTT", kind, digest[:12])
            partial.unlink()
            self._fetch_chunks(kind, digest, partial, stop)
        log.info(
            "fetched %s %s over MQTT: %d bytes in %.2fs",
            kind, digest[:12], partial.stat().st_size, time.monotonic() - started,
        )  # fmt: skip
        return partial

    def _fetch_chunks(self, kind: Kind, digest: str, partial: Path, stop: threading.Event) -> None:
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
