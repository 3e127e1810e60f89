"""The agent daemon: serves the active model and converges to the coordinator's desired state.

Start-up order: store -> active model (verified again) -> local API -> MQTT link -> workers.
Shutdown runs in reverse from ``stop``.
"""

from __future__ import annotations

import logging
import queue
import threading
from datetime import UTC, datetime

from agent import __version__
from agent.api import InferenceApi, InferenceService
from agent.config import AgentConfig
from agent.device_class import load_device_class
from agent.errors import ActivationError, FetchError
from agent.fetcher import ChunkFetcher
from agent.model import LoadedModel, load_model
from agent.runtimes import RuntimeOptions
from agent.store import ModelStore, Slots
from agent.sync import AgentLink, Handlers
from agent.telemetry import InferenceStats
from protocol.bundle import Manifest, SignedManifest, verify_manifest
from protocol.errors import BundleError
from protocol.messages import (
    BundleRef,
    ChunkRequest,
    Command,
    CommandResult,
    DesiredState,
    ErrorInfo,
    ReportedState,
)
from protocol.signing import load_trusted_keys
from protocol.topics import Channel

__all__ = ["Agent"]

log = logging.getLogger(__name__)


class Agent:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.device_class = (
            load_device_class(config.device_class, config.device_class_dir)
            if config.device_class_dir
            else load_device_class(config.device_class)
        )
        self.runtime_options = RuntimeOptions(
            intra_op_threads=self.device_class.runtime.intra_op_threads,
            inter_op_threads=self.device_class.runtime.inter_op_threads,
            cache_dir=config.data_dir / "cache",
        )
        self.telemetry_interval_s = config.telemetry_interval_s or self.device_class.telemetry.interval_s
        self.trusted = load_trusted_keys(config.trusted_keys)
        self.store = ModelStore(config.data_dir / "store")
        self.stats = InferenceStats()
        self.started_at = datetime.now(UTC)
        self.model: LoadedModel | None = None
        self.status = "starting"
        self.last_error: ErrorInfo | None = None
        self.desired_revision: int | None = None
        self._desired: queue.Queue[DesiredState] = queue.Queue()
        self._refused: tuple[str, int] | None = None  # (digest, revision) refused for good
        self._stop = threading.Event()
        self._state_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self.link = AgentLink(
            config.device_id,
            config.broker,
            Handlers(
                on_desired=self._desired.put,
                on_chunk=lambda header, data: self.fetcher.on_chunk(header, data),
                on_command=self._on_command,
                on_connected=self.report,
            ),
        )
        self.fetcher = ChunkFetcher(
            config.device_id,
            self._publish_chunk_request,
            chunk_bytes=config.fetch.chunk_bytes,
            timeout_s=config.fetch.chunk_timeout_s,
            retries=config.fetch.retries,
        )
        self.api = InferenceApi(
            InferenceService(lambda: self.model, self.stats, config.device_class),
            socket_path=config.socket_path,
            tcp_port=config.api.tcp_port,
            max_message_bytes=config.api.max_message_bytes,
            workers=config.api.workers,
        )

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        self._restore_active()
        self.api.start()
        self.link.start()
        for name, target in (("reconcile", self._reconcile_loop), ("telemetry", self._telemetry_loop)):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        log.info("stopping agent %s", self.config.device_id)
        self._stop.set()
        for thread in reversed(self._threads):
            thread.join(timeout=5)
        self.link.stop()
        self.api.stop()

    def wait(self) -> None:
        self._stop.wait()

    def request_stop(self) -> None:
        self._stop.set()

    def _restore_active(self) -> None:
        """Serve the active bundle from disk, verified again; fall back to the previous one."""
        slots = self.store.slots()
        for digest in (slots.active, slots.previous):
            if digest is None:
                continue
            try:
                manifest = self.store.verified_bundle(digest, self.trusted)
                self.model = self._load(digest, manifest)
            except (BundleError, ActivationError) as exc:
                log.error("stored bundle %s cannot be served: %s", digest[:12], exc.reason)
                self.last_error = ErrorInfo(reason=f"stored bundle unusable: {exc.reason}", bundle_digest=digest)
                continue
            if digest != slots.active:
                self.store.set_slots(Slots(active=digest, previous=None))
            log.info("serving stored bundle %s %s", manifest.name, manifest.version)
            self.api.set_serving(True)
            self.status = "ready"
            return
        self.status = "idle"

    def _load(self, digest: str, manifest: Manifest) -> LoadedModel:
        return load_model(
            digest,
            manifest,
            self.store.model_path(manifest),
            chain=self.device_class.runtime.chain,
            options=self.runtime_options,
        )

    # -- state ---------------------------------------------------------------------------
    def reported_state(self) -> ReportedState:
        slots = self.store.slots()
        previous = None
        if slots.previous and (signed := self.store.signed_manifest(slots.previous)):
            previous = _ref(signed)
        model = self.model
        return ReportedState(
            device_id=self.config.device_id,
            device_class=self.config.device_class,
            agent_version=__version__,
            status=self.status,  # type: ignore[arg-type]
            active=model.ref if model else None,
            previous=previous,
            desired_revision=self.desired_revision,
            runtime=model.runtime.key if model else None,
            runtime_skipped=model.skipped_runtimes if model else [],
            last_error=self.last_error,
            rejected_messages=self.link.rejected,
            started_at=self.started_at,
        )

    def report(self) -> None:
        with self._state_lock:
            state = self.reported_state()
        self.link.publish(Channel.REPORTED, state)

    def _set_status(self, status: str, error: ErrorInfo | None = None) -> None:
        self.status = status
        if error is not None:
            self.last_error = error
        self.report()

    # -- reconciliation ------------------------------------------------------------------
    def _reconcile_loop(self) -> None:
        latest: DesiredState | None = None
        retry = False  # the last attempt failed for a reason worth retrying (network, coordinator)
        while not self._stop.is_set():
            try:
                latest = self._desired.get(timeout=self.config.fetch.retry_backoff_s if retry else 0.5)
            except queue.Empty:
                if not retry or latest is None:
                    continue
            while not self._desired.empty():  # only the newest desired state matters
                latest = self._desired.get_nowait()
            if latest.revision < (self.desired_revision or 0):
                log.info("ignoring desired revision %s older than %s", latest.revision, self.desired_revision)
                continue
            self.desired_revision = latest.revision
            retry = not self._converge(latest)

    def _converge(self, desired: DesiredState) -> bool:
        """Move towards ``desired``; return False only when trying again later may succeed."""
        target = desired.bundle
        if target is None or (self.model is not None and self.model.digest == target.digest):
            self._set_status("ready" if self.model else "idle")
            return True
        if self._refused == (target.digest, desired.revision):
            return True  # already refused for a reason that retrying cannot change
        try:
            self._set_status("downloading")
            manifest_digest, manifest = self._download(target)
            self._set_status("activating")
            model = self._load(manifest_digest, manifest)
        except FetchError as exc:
            log.warning("download of %s paused: %s", target.digest[:12], exc.reason)
            self._set_status("error", ErrorInfo(reason=f"download: {exc.reason}", bundle_digest=target.digest))
            return False
        except (BundleError, ActivationError) as exc:
            log.error("refused bundle %s (%s %s): %s", target.digest[:12], target.name, target.version, exc.reason)
            self._refused = (target.digest, desired.revision)
            self._set_status(
                "ready" if self.model else "error",
                ErrorInfo(reason=f"refused: {exc.reason}", bundle_digest=target.digest),
            )
            return True
        self._activate(model)
        return True

    def _download(self, target: BundleRef) -> tuple[str, Manifest]:
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
        # Check the signature before downloading anything big.
        manifest = verify_manifest(signed, self.trusted)
        if manifest.device_class != self.config.device_class:
            raise BundleError(
                f"bundle is for device class {manifest.device_class!r}, this device is {self.config.device_class!r}"
            )
        self.store.put_manifest(signed)
        for entry in manifest.files:
            if self.store.has_blob(entry.sha256):
                continue
            partial = self.store.partial_path("file", entry.sha256)
            self.fetcher.fetch("file", entry.sha256, partial, self._stop)
            if partial.stat().st_size != entry.size:
                partial.unlink()
                raise BundleError(f"file {entry.name!r}: {partial.stat().st_size} bytes, manifest says {entry.size}")
            self.store.commit_blob(partial, entry.sha256)
        return target.digest, self.store.verified_bundle(target.digest, self.trusted)

    def _activate(self, model: LoadedModel) -> None:
        slots = self.store.slots()
        with self._state_lock:
            self.store.set_slots(Slots(active=model.digest, previous=slots.active))
            self.model = model
        self.api.set_serving(True)
        log.info("activated %s %s (%s)", model.manifest.name, model.manifest.version, model.digest[:12])
        self._set_status("ready")

    # -- messages ------------------------------------------------------------------------
    def _publish_chunk_request(self, request: ChunkRequest) -> bool:
        return self.link.publish(Channel.CHUNK_REQUESTS, request) is not None

    def _on_command(self, command: Command) -> None:
        if command.name == "report_state":
            self.report()
            detail = "reported"
        else:
            detail = "pong"
        self.link.publish(
            Channel.COMMAND_RESULTS,
            CommandResult(device_id=self.config.device_id, command_id=command.message_id, ok=True, detail=detail),
        )

    def _telemetry_loop(self) -> None:
        while not self._stop.wait(self.telemetry_interval_s):
            model = self.model
            telemetry = (
                self.stats.take(self.config.device_id, model.digest, model.runtime.key, model.skipped_runtimes)
                if model
                else self.stats.take(self.config.device_id, None)
            )
            if self.link.publish(Channel.TELEMETRY, telemetry) is None:
                log.debug("offline: telemetry window dropped (the durable outbox comes with the agent issue)")


def _ref(signed: SignedManifest) -> BundleRef | None:
    try:
        manifest = Manifest.model_validate_json(signed.manifest)
    except ValueError:
        return None
    return BundleRef(digest=signed.digest, name=manifest.name, version=manifest.version)
