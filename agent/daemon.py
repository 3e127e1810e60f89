"""The agent daemon: serves the active model and converges to the coordinator's desired state.

Start-up order: crash-loop check -> store -> active model (verified again) -> local API -> MQTT
link -> workers. ``stop`` runs the same steps in reverse.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime

from edgefleet.agent import __version__
from edgefleet.agent.bundles.fetcher import ChunkFetcher, HttpMirror
from edgefleet.agent.bundles.reconcile import Reconciler
from edgefleet.agent.bundles.store import ModelStore
from edgefleet.agent.config import AgentConfig
from edgefleet.agent.device_class import DeviceClass, load_device_class
from edgefleet.agent.errors import ActivationError
from edgefleet.agent.learning.participant import FederatedParticipant
from edgefleet.agent.learning.samples import RecentRequests, SampleStore
from edgefleet.agent.mqtt.commands import CommandVerifier
from edgefleet.agent.mqtt.control import FLOOR_FILE, ControlVerifier
from edgefleet.agent.mqtt.link import AgentLink, Handlers
from edgefleet.agent.mqtt.outbox import Outbox, OutboxError
from edgefleet.agent.mqtt.sender import OutboxSender
from edgefleet.agent.runtimes import RuntimeOptions
from edgefleet.agent.serving.batcher import MicroBatcher
from edgefleet.agent.serving.model import LoadedModel, load_model
from edgefleet.agent.serving.server import InferenceApi, InferenceService
from edgefleet.agent.serving.update_lock import UpdateLock
from edgefleet.agent.systemd import notify, watchdog_interval_s
from edgefleet.agent.telemetry.stats import InferenceStats
from edgefleet.agent.telemetry.thermal import MARKER_NAME, ThermalGuard
from edgefleet.protocol.bundle import Manifest, SignedManifest
from edgefleet.protocol.errors import BundleError
from edgefleet.protocol.messages import (
    BundleRef,
    ChunkRequest,
    Command,
    CommandResult,
    ErrorInfo,
    FailureKind,
    Message,
    ReportedState,
    Telemetry,
)
from edgefleet.protocol.signing import TrustedKeys, load_trusted_keys
from edgefleet.protocol.topics import Channel

__all__ = ["Agent"]

log = logging.getLogger(__name__)

THERMAL_CHECK_S = 5.0  # how often the SoC temperature is held against the class's [thermal] limits


def _device_class(config: AgentConfig) -> DeviceClass:
    if config.device_class_dir:
        return load_device_class(config.device_class, config.device_class_dir)
    return load_device_class(config.device_class)


class Agent:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.device_class = _device_class(config)
        self.runtime_options = RuntimeOptions(
            intra_op_threads=self.device_class.runtime.intra_op_threads,
            inter_op_threads=self.device_class.runtime.inter_op_threads,
            allow_spinning=self.device_class.runtime.allow_spinning,
            cache_dir=config.data_dir / "cache",
        )
        self.trusted: TrustedKeys = load_trusted_keys(config.trusted_keys)
        self.store = ModelStore(config.data_dir / "store")
        self.stats = InferenceStats(thermal_zones=config.thermal_zones)
        self.thermal = ThermalGuard(
            self.device_class.thermal, zones=config.thermal_zones, marker=config.data_dir / MARKER_NAME
        )
        self.started_at = datetime.now(UTC)
        self.model: LoadedModel | None = None
        self.status = "starting"
        self.last_error: ErrorInfo | None = None
        self.update_lock = UpdateLock()
        self.outbox = Outbox(
            config.data_dir / "outbox.db",
            max_bytes=self.device_class.outbox.max_bytes,
            max_messages=self.device_class.outbox.max_messages,
        )
        self._stop = threading.Event()
        self._state_lock = threading.Lock()
        self._reported_samples: int | None = None  # training_samples in the last reported state
        self._threads: list[threading.Thread] = []
        command_keys = load_trusted_keys(config.command_keys)
        self.commands = CommandVerifier(
            config.device_id, command_keys, journal=config.data_dir / "commands-seen.json"
        )
        self.control = ControlVerifier(config.device_id, command_keys, config.data_dir / FLOOR_FILE)
        self.link = AgentLink(
            config.device_id,
            config.broker,
            Handlers(
                on_desired=lambda desired: self.reconciler.offer(desired),
                on_chunk=lambda header, data: self.fetcher.on_chunk(header, data),
                on_command=self._on_command,
                on_connected=self._on_connected,
                on_campaign=lambda assignment: self.federated.assign(assignment),
            ),
            self.commands,
            self.control,
            coordinator_marker=config.data_dir / "coordinator-announces",
        )
        self.fetcher = ChunkFetcher(
            config.device_id,
            self._publish_chunk_request,
            chunk_bytes=config.fetch.chunk_bytes,
            timeout_s=config.fetch.chunk_timeout_s,
            retries=config.fetch.retries,
            window=config.fetch.window,
            mirror=HttpMirror.from_config(config.fetch),
        )
        self.reconciler = Reconciler(
            device_class=config.device_class,
            store=self.store,
            fetcher=self.fetcher,
            trusted=lambda: self.trusted,
            load=self._load,
            activate=self._activate,
            current=lambda: self.model,
            set_status=self._set_status,
            update_lock=self.update_lock,
            retry_backoff_s=lambda: self.config.fetch.retry_backoff_s,
            stop=self._stop,
        )
        self.sender = OutboxSender(self.outbox, self.link.publish_raw, self.link.gate)
        self.link.gate.on_open = self.sender.wake
        batching = self.device_class.batching
        self.batcher = MicroBatcher(max_batch_size=batching.max_batch_size, max_delay_ms=batching.max_delay_ms)
        feedback = config.feedback
        self.samples = SampleStore(
            config.data_dir / "samples.db",
            max_bytes=feedback.max_mb << 20,
            max_age_s=feedback.max_age_days * 86400,
        )
        self.federated = FederatedParticipant(
            config.device_id, config.data_dir, config.data_dir / "samples.db", config.federated, on_change=self.report
        )
        self.api = InferenceApi(
            InferenceService(
                lambda: self.model,
                self.stats,
                config.device_class,
                batcher=self.batcher,
                recent=RecentRequests(max_entries=feedback.remember_requests, max_age_s=feedback.remember_s),
                samples=self.samples,
                update_lock=self.update_lock,
                shedding=self.thermal.shedding,
            ),
            socket_path=config.socket_path,
            tcp_port=config.api.tcp_port,
            max_message_bytes=config.api.max_message_bytes,
            workers=config.api.workers,
        )

    @property
    def telemetry_interval_s(self) -> float:
        return self.config.telemetry_interval_s or self.device_class.telemetry.interval_s

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        self._check_crash_loop()
        self._restore_active()
        self._collect_garbage()
        self.api.start()
        self.link.start()
        self.sender.start()
        self.federated.start()
        self.thermal.check()
        workers = [
            ("reconcile", self.reconciler.run), ("telemetry", self._telemetry_loop), ("thermal", self._thermal_loop),
        ]  # fmt: skip
        if (interval := watchdog_interval_s()) is not None:
            workers.append(("watchdog", lambda: self._watchdog_loop(interval)))
        for name, target in workers:
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        notify("READY=1", f"STATUS=serving {self._describe()}")

    def stop(self) -> None:
        log.info("stopping agent %s", self.config.device_id)
        notify("STOPPING=1")
        self._stop.set()
        for thread in reversed(self._threads):
            thread.join(timeout=5)
        self.federated.stop()
        self.sender.stop()
        self.link.stop()
        self.api.stop()
        self.batcher.close()
        self.samples.close()
        self.outbox.close()
        self.store.record_clean_stop()

    def wait(self) -> None:
        self._stop.wait()

    def request_stop(self) -> None:
        self._stop.set()

    def reload(self, config: AgentConfig) -> list[str]:
        """Apply a re-read config (SIGHUP); return the changed settings that need a restart instead."""
        restart = [
            key
            for key in ("device_id", "device_class", "device_class_dir", "data_dir", "broker", "api")
            if getattr(config, key) != getattr(self.config, key)
        ]
        for key in restart:
            log.warning("config reload: %s changed; restart the agent to apply it", key)
        self.trusted = load_trusted_keys(config.trusted_keys)
        self.commands.trusted = self.control.trusted = load_trusted_keys(config.command_keys)
        self.fetcher.chunk_bytes = config.fetch.chunk_bytes
        self.fetcher.timeout_s = config.fetch.chunk_timeout_s
        self.fetcher.retries = config.fetch.retries
        logging.getLogger().setLevel(config.log_level)
        self.config = config.model_copy(update={key: getattr(self.config, key) for key in restart})
        log.info(
            "config reloaded: trusted keys %s, telemetry every %.0fs", sorted(self.trusted), self.telemetry_interval_s
        )
        return restart

    def _check_crash_loop(self) -> None:
        """Several unclean starts soon after an activation: go back to the previous bundle."""
        window = self.config.store.crash_loop_window_s
        starts = self.store.record_start(window)
        state = self.store.state()
        recent_activation = state.activated_at is not None and time.time() - state.activated_at <= window
        if starts < self.config.store.crash_loop_restarts or not recent_activation or not state.previous:
            return
        assert state.active is not None
        reason = f"crash loop: {starts} unclean starts within {window:.0f}s after activating {state.active[:12]}"
        log.error("%s; reverting to %s", reason, state.previous[:12])
        self.store.revert(reason)
        self.last_error = ErrorInfo(reason=f"reverted: {reason}", kind=FailureKind.REVERTED, bundle_digest=state.active)

    def _restore_active(self) -> None:
        """Serve the active bundle from disk, verified again; fall back to the previous one."""
        state = self.store.state()
        for digest in (state.active, state.previous):
            if digest is None:
                continue
            try:
                self.model = self._load(digest, self.store.verified_bundle(digest, self.trusted))
            except (BundleError, ActivationError) as exc:
                log.error("stored bundle %s cannot be served: %s", digest[:12], exc.reason)
                self.last_error = ErrorInfo(
                    reason=f"stored bundle unusable: {exc.reason}", kind=FailureKind.UNUSABLE, bundle_digest=digest
                )
                continue
            if digest != state.active:
                self.store.revert(f"stored bundle unusable: {self.last_error.reason if self.last_error else ''}")
            log.info("serving stored bundle %s", self._describe())
            self.api.set_serving(True)
            self.status = "ready"
            return
        self.status = "idle"

    def _collect_garbage(self) -> None:
        removed = self.store.gc(self.config.store.keep_bundles)
        if removed:
            log.info("deleted %d old bundle(s) from the store", len(removed))

    def _load(self, digest: str, manifest: Manifest) -> LoadedModel:
        return load_model(
            digest,
            manifest,
            self.store.model_path(manifest),
            chain=self.device_class.runtime.chain,
            options=self.runtime_options,
            drift_window=self.config.drift.window,
            locate=lambda entry: self.store.blob_path(entry.sha256),
        )

    def _activate(self, model: LoadedModel, revision: int | None) -> None:
        with self._state_lock:
            self.store.activate(model.digest, revision)
            old, self.model = self.model, model
        if old is not None:
            old.runtime.close()
        self.api.set_serving(True)
        log.info("activated %s (runtime %s)", self._describe(), model.runtime.key)
        notify(f"STATUS=serving {self._describe()}")
        self._set_status("ready", None)
        self._collect_garbage()

    def _describe(self) -> str:
        model = self.model
        return "no model" if model is None else f"{model.manifest.name} {model.manifest.version} ({model.digest[:12]})"

    # -- state ---------------------------------------------------------------------------
    def reported_state(self) -> ReportedState:
        state = self.store.state()
        previous = None
        if state.previous and (signed := self.store.signed_manifest(state.previous)):
            previous = _ref(signed)
        model = self.model
        return ReportedState(
            device_id=self.config.device_id,
            device_class=self.config.device_class,
            agent_version=__version__,
            status=self.status,  # type: ignore[arg-type]
            active=model.ref if model else None,
            previous=previous,
            desired_revision=self.reconciler.desired_revision,
            runtime=model.runtime.key if model else None,
            runtime_skipped=model.skipped_runtimes if model else [],
            last_error=self.last_error
            or (
                ErrorInfo(reason=self.federated.last_error, kind=FailureKind.FEDERATED)
                if self.federated.last_error
                else None
            ),
            rejected_messages=self.link.rejected,
            training_samples=self.samples.count(),
            campaign=self.federated.campaign_id,
            supernode_public_key=self.federated.supernode_public_key,
            started_at=self.started_at,
        )

    def report(self) -> None:
        with self._state_lock:
            state = self.reported_state()
            self._reported_samples = state.training_samples
        self._send(Channel.REPORTED, state)

    def _send(self, channel: Channel, message: Message) -> None:
        """Through the durable outbox: delivered at least once, whenever the broker is reachable."""
        try:
            self.outbox.put(channel, message)
        except OutboxError as exc:
            log.error("could not queue %s message: %s", channel.value, exc.reason)
            return
        self.sender.wake()

    def _on_connected(self) -> None:
        self.report()
        self.sender.wake()

    def _set_status(self, status: str, error: ErrorInfo | None) -> None:
        self.status = status
        if error is not None:
            self.last_error = error
        self.report()

    # -- messages and workers ------------------------------------------------------------
    def _publish_chunk_request(self, request: ChunkRequest) -> bool:
        return self.link.publish(Channel.CHUNK_REQUESTS, request) is not None

    def _on_command(self, command: Command) -> None:
        if command.name == "report_state":
            self.report()
            detail = "reported"
        else:
            detail = "pong"
        self._send(
            Channel.COMMAND_RESULTS,
            CommandResult(device_id=self.config.device_id, command_id=command.message_id, ok=True, detail=detail),
        )

    def _thermal_loop(self) -> None:
        while not self._stop.wait(THERMAL_CHECK_S):
            self.thermal.check()

    def _telemetry_loop(self) -> None:
        while not self._stop.wait(self.telemetry_interval_s):
            self._send(Channel.TELEMETRY, self.telemetry_window())
            self.report_if_samples_changed()

    def report_if_samples_changed(self) -> bool:
        """Labelled samples arrive through Feedback, which sends no state of its own: once a telemetry window
        the count is compared with the last one reported, so the coordinator sees it within one interval
        (a campaign selects devices by it)."""
        if self.samples.count() == self._reported_samples:
            return False
        self.report()
        return True

    def telemetry_window(self) -> Telemetry:
        """Close the current telemetry window: inference figures, the device's health, drift against the
        active bundle's reference (an alert over the configured threshold) and the outbox's state."""
        model = self.model
        telemetry = self.stats.take(
            self.config.device_id,
            model.digest if model else None,
            model.runtime.key if model else None,
            model.skipped_runtimes if model else None,
            data_dir=self.config.data_dir,
        )
        threshold = self.config.drift.threshold
        if model is not None and model.drift is not None:
            score, features = model.drift.score()
            telemetry.drift_score = score
            telemetry.drift_features = features
            if score is not None and score > threshold:
                telemetry.drift_alert = True
                log.warning("input drift %.3f over threshold %.2f on %s", score, threshold, features)
        if model is not None and model.confidence_drift is not None:
            confidence = model.confidence_drift.score()
            telemetry.confidence_drift_score = confidence
            if confidence is not None and confidence > threshold:
                telemetry.drift_alert = True
                log.warning(
                    "output confidence drift %.3f over threshold %.2f on %r",
                    confidence,
                    threshold,
                    model.confidence_drift.output,
                )
        outbox = self.outbox.stats()
        telemetry.outbox_pending = outbox.pending
        telemetry.outbox_dropped = {channel.value: n for channel, n in outbox.dropped.items() if n}
        return telemetry

    def _watchdog_loop(self, interval_s: float) -> None:
        """Tell systemd we are alive while the reconcile worker is; a hung worker gets us restarted."""
        while not self._stop.wait(interval_s):
            if all(t.is_alive() for t in self._threads if t.name != "watchdog"):
                notify("WATCHDOG=1")
            else:
                log.error("a worker thread died; withholding the watchdog ping so systemd restarts the agent")


def _ref(signed: SignedManifest) -> BundleRef | None:
    try:
        manifest = Manifest.model_validate_json(signed.manifest)
    except ValueError:
        return None
    return BundleRef(digest=signed.digest, name=manifest.name, version=manifest.version)
