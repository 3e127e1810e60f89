"""Converging to the desired state: fetch, verify, load, self-test, wait for the update lock, switch."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

from edgefleet.agent.bundles.fetcher import ChunkFetcher
from edgefleet.agent.bundles.store import ModelStore
from edgefleet.agent.errors import ActivationError, FetchError
from edgefleet.agent.serving.model import LoadedModel
from edgefleet.agent.serving.update_lock import UpdateLock
from edgefleet.protocol.bundle import Manifest, SignedManifest, is_downgrade, verify_manifest
from edgefleet.protocol.errors import BundleError
from edgefleet.protocol.messages import BundleRef, DesiredState, ErrorInfo, FailureKind
from edgefleet.protocol.signing import TrustedKeys

__all__ = ["Reconciler"]

log = logging.getLogger(__name__)

Status = Callable[[str, ErrorInfo | None], None]


class Reconciler:
    """Owns the reconcile thread's work; the agent supplies loading, activation and status reporting."""

    def __init__(
        self,
        *,
        device_class: str,
        store: ModelStore,
        fetcher: ChunkFetcher,
        trusted: Callable[[], TrustedKeys],
        load: Callable[[str, Manifest], LoadedModel],
        activate: Callable[[LoadedModel, int | None], None],
        current: Callable[[], LoadedModel | None],
        set_status: Status,
        update_lock: UpdateLock,
        retry_backoff_s: Callable[[], float],
        stop: threading.Event,
    ) -> None:
        self.device_class = device_class
        self.store = store
        self.fetcher = fetcher
        self._trusted = trusted
        self._load = load
        self._activate = activate
        self._current = current
        self._set_status = set_status
        self._lock = update_lock
        self._backoff = retry_backoff_s
        self._stop = stop
        self._desired: queue.Queue[DesiredState] = queue.Queue()
        self.desired_revision: int | None = None

    def offer(self, desired: DesiredState) -> None:
        """Called from the MQTT thread; the newest desired state wins."""
        self._desired.put(desired)

    def run(self) -> None:
        latest: DesiredState | None = None
        retry = False  # the last attempt failed for a reason worth retrying (network, coordinator)
        while not self._stop.is_set():
            try:
                latest = self._desired.get(timeout=self._backoff() if retry else 0.5)
            except queue.Empty:
                if not retry or latest is None:
                    continue
            while not self._desired.empty():
                latest = self._desired.get_nowait()
            if latest.revision < (self.desired_revision or 0):
                log.info("ignoring desired revision %s older than %s", latest.revision, self.desired_revision)
                continue
            self.desired_revision = latest.revision
            retry = not self.converge(latest)

    def converge(self, desired: DesiredState) -> bool:
        """Move towards ``desired``; return False only when trying again later may succeed."""
        target = desired.bundle
        model = self._current()
        if target is None or (model is not None and model.digest == target.digest):
            self._set_status("ready" if model else "idle", None)
            return True
        refusal = self.store.state().refused.get(target.digest)
        if refusal is not None and (refusal["revision"] or 0) >= desired.revision:
            return True  # refused for a reason that retrying the same revision cannot change
        floor = model.manifest.min_version if model is not None else None
        if (
            model is not None and floor is not None and not desired.allow_downgrade
            and target.name == model.manifest.name and is_downgrade(target.version, floor)
        ):  # fmt: skip
            reason = (
                f"{target.name} {target.version} is below {floor}, the minimum version the active bundle "
                f"({model.manifest.version}) declares; only a deployment that allows the downgrade can go there"
            )
            log.error("refused bundle %s: %s", target.digest[:12], reason)
            self.store.refuse(target.digest, reason, desired.revision)
            self._set_status(
                "ready", ErrorInfo(reason=f"refused: {reason}", kind=FailureKind.REFUSED, bundle_digest=target.digest)
            )
            return True
        try:
            self._set_status("downloading", None)
            manifest = self._download(target)
            self._set_status("activating", None)
            loaded = self._load(target.digest, manifest)
        except FetchError as exc:
            log.warning("download of %s paused: %s", target.digest[:12], exc.reason)
            error = ErrorInfo(reason=f"download: {exc.reason}", kind=FailureKind.DOWNLOAD, bundle_digest=target.digest)
            self._set_status("error", error)
            return False
        except (BundleError, ActivationError) as exc:
            log.error("refused bundle %s (%s %s): %s", target.digest[:12], target.name, target.version, exc.reason)
            self.store.refuse(target.digest, exc.reason, desired.revision)
            self._set_status(
                "ready" if self._current() else "error",
                ErrorInfo(reason=f"refused: {exc.reason}", kind=FailureKind.REFUSED, bundle_digest=target.digest),
            )
            return True
        if self._lock.holds():
            holders = ", ".join(h.holder for h in self._lock.holds())
            log.info("bundle %s ready; waiting for the update lock held by %s", target.digest[:12], holders)
            self._set_status("waiting_for_lock", None)
            if not self._lock.wait_free(self._stop):
                return True
        self._activate(loaded, desired.revision)
        return True

    def _download(self, target: BundleRef) -> Manifest:
        """Fetch (or find) the signed manifest, verify it, then fetch and verify every file."""
        signed = self.store.signed_manifest(target.digest)
        if signed is None:
            partial = self.store.partial_path("manifest", target.digest)
            self.fetcher.fetch("manifest", target.digest, partial, self._stop)
            try:
                signed = SignedManifest.from_bytes(partial.read_bytes())
            finally:
                partial.unlink(missing_ok=True)
            if signed.digest != target.digest:
                raise BundleError(f"manifest hashes to {signed.digest[:12]}, expected {target.digest[:12]}")
        # The signature is checked before anything big is downloaded.
        manifest = verify_manifest(signed, self._trusted())
        if manifest.device_class != self.device_class:
            raise BundleError(
                f"bundle is for device class {manifest.device_class!r}, this device is {self.device_class!r}"
            )
        self.store.put_manifest(signed)
        for entry in manifest.files:
            if self.store.has_blob(entry.sha256):
                continue
            partial = self.store.partial_path("file", entry.sha256)
            self.fetcher.fetch("file", entry.sha256, partial, self._stop, mirrors=manifest.mirrors)
            size = partial.stat().st_size
            if size != entry.size:
                partial.unlink()
                raise BundleError(f"file {entry.name!r}: {size} bytes, manifest says {entry.size}")
            self.store.commit_blob(partial, entry.sha256)
        return self.store.verified_bundle(target.digest, self._trusted())
