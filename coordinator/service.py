"""The coordinator's core: registry, fleet store and MQTT link, and the operations on them."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from edgefleet.coordinator.config import CampaignsConfig, CoordinatorConfig
from edgefleet.coordinator.errors import Conflict, NotFound
from edgefleet.coordinator.leadership import AdvisoryLockLeader, Leadership, SoleLeader
from edgefleet.coordinator.mqtt.link import CoordinatorLink
from edgefleet.coordinator.mqtt.signer import CommandSigner
from edgefleet.coordinator.registry.artifacts import Registry
from edgefleet.coordinator.registry.models import ModelRegistry
from edgefleet.coordinator.rollouts.engine import RolloutEngine
from edgefleet.coordinator.store import FleetStore, open_store
from edgefleet.coordinator.telemetry.retention import TelemetryPruner
from edgefleet.protocol.messages import BundleRef, DesiredState
from edgefleet.protocol.signing import load_trusted_keys

if TYPE_CHECKING:
    from edgefleet.common.flower_processes import TlsFiles
    from edgefleet.coordinator.campaigns.manager import CampaignManager

__all__ = ["Coordinator"]

log = logging.getLogger(__name__)


class Coordinator:
    def __init__(self, config: CoordinatorConfig) -> None:
        config.data_dir.mkdir(parents=True, exist_ok=True)
        self.config = config
        self.db: FleetStore = open_store(
            config.store.url or config.data_dir / "fleet.db", connect_timeout_s=config.store.connect_timeout_s
        )
        self.registry = Registry(config.data_dir, self.db, load_trusted_keys(config.trusted_keys))
        self.signer = CommandSigner.from_file(config.command_key) if config.command_key else None
        if self.signer is None:
            log.warning("no command_key: desired states and campaign assignments go unsigned")
        self.link = CoordinatorLink(
            config.broker, self.db, self.registry, client_id=config.client_id, share_group=config.replica_group,
            signer=self.signer, control_ttl_s=config.control_ttl_s,
        )  # fmt: skip
        self._resigning = threading.Event()
        # Replicas on one PostgreSQL store elect one of them to run the fleet-wide jobs.
        self.leadership: Leadership = AdvisoryLockLeader(config.store.url) if config.store.url else SoleLeader()
        self.link.on_connected = self._republish_if_leading
        self.models = ModelRegistry(self.db)
        self.rollouts = RolloutEngine(
            self.db, self.deploy, resolve_version=self.models.resolve, is_leader=self.leadership.is_leader
        )
        self.pruner = TelemetryPruner(self.db, config.retention, is_leader=self.leadership.is_leader)
        self.campaigns = self._campaigns(config)

    def start(self) -> None:
        self.leadership.start()
        self.link.start()
        self.rollouts.start()
        self.pruner.start()
        if self.signer is not None:
            threading.Thread(target=self._resign_loop, name="resign-desired", daemon=True).start()

    def stop(self) -> None:
        self._resigning.set()
        if self.campaigns is not None:
            self.campaigns.stop()
        self.pruner.stop()
        self.rollouts.stop()
        self.link.stop()
        self.leadership.stop()

    def _campaigns(self, config: CoordinatorConfig) -> CampaignManager | None:
        """Campaigns need the federated extra; without it the API says so instead of failing to start."""
        try:
            from edgefleet.coordinator.campaigns.engines import DeploymentEngine
            from edgefleet.coordinator.campaigns.manager import CampaignManager
        except ImportError as exc:
            log.info("federated campaigns are off: %s (pip install edgefleet[federated])", exc)
            return None
        settings = config.campaigns
        engine = None
        if settings.engine == "deployment":
            engine = DeploymentEngine(
                config.data_dir / "campaigns",
                self.link.publish_campaign,
                bind_host=settings.superlink_bind_host,
                advertise_host=settings.superlink_advertise_host,
                tls=_superlink_tls(settings),
                architectures=settings.architectures,
            )
        return CampaignManager(
            self.db, self.models, self.registry, signing_key=settings.signing_key, engine=engine,
            architectures=settings.architectures,
        )  # fmt: skip

    def _bundle_by_prefix(self, prefix: str) -> dict[str, Any] | None:
        matches = [b for b in self.db.bundles() if b["digest"].startswith(prefix)]
        if len(matches) > 1:
            raise Conflict(f"{prefix} is the start of {len(matches)} bundle digests; give more of it")
        return matches[0] if matches else None

    def _republish_if_leading(self) -> None:
        # One replica republishes; the desired states are retained, so the others' connections need nothing.
        if self.leadership.is_leader():
            self.republish_desired()

    def _resign_loop(self) -> None:
        """Signed desired states expire: the leader signs them all again after a quarter of their validity."""
        while not self._resigning.wait(self.config.control_ttl_s / 4):
            if self.leadership.is_leader() and self.link.connected.is_set():
                self.republish_desired()
                log.info("desired states signed again (valid %.0f h)", self.config.control_ttl_s / 3600)

    def republish_desired(self) -> None:
        """After (re)connecting, publish every desired state again, in case the broker lost retained ones."""
        for row in self.db.desired_states():
            self.link.publish_desired(
                self._desired_message(
                    row["device_id"], row["revision"], row["bundle_digest"], bool(row.get("allow_downgrade"))
                )
            )

    def _desired_message(
        self, device_id: str, revision: int, digest: str | None, allow_downgrade: bool = False
    ) -> DesiredState:
        ref = None
        if digest is not None:
            bundle = self.db.bundle(digest)
            if bundle is None:
                raise NotFound(f"no bundle {digest}")
            ref = BundleRef(digest=digest, name=bundle["name"], version=bundle["version"])
        return DesiredState(device_id=device_id, revision=revision, bundle=ref, allow_downgrade=allow_downgrade)

    def deploy(
        self, digest: str, device_ids: list[str] | None = None, *, allow_downgrade: bool = False
    ) -> list[dict[str, Any]]:
        """Make ``digest`` (or the one bundle whose digest starts with it) the desired bundle of the named
        devices, or of every device of its class; ``allow_downgrade``: even below the min_version their active
        bundle declares."""
        bundle = self.db.bundle(digest) if len(digest) == 64 else self._bundle_by_prefix(digest)
        if bundle is None:
            raise NotFound(f"no bundle {digest}")
        digest = bundle["digest"]
        if device_ids is None:
            targets = [d["device_id"] for d in self.db.devices(device_class=bundle["device_class"])]
            if not targets:
                raise Conflict(f"no known device of class {bundle['device_class']!r}")
        else:
            targets = []
            for device_id in device_ids:
                device = self.db.device(device_id)
                if device is None:
                    raise NotFound(f"no device {device_id!r}")
                if device.get("device_class") and device["device_class"] != bundle["device_class"]:
                    raise Conflict(
                        f"device {device_id!r} is {device['device_class']!r}; bundle is for {bundle['device_class']!r}"
                    )
                targets.append(device_id)
        results = []
        for device_id in targets:
            revision = self.db.set_desired(device_id, digest, allow_downgrade=allow_downgrade)
            self.link.publish_desired(self._desired_message(device_id, revision, digest, allow_downgrade))
            results.append({"device_id": device_id, "revision": revision, "bundle_digest": digest})
        log.info("deployed %s %s to %d device(s)", bundle["name"], bundle["version"], len(results))
        return results


def _superlink_tls(settings: CampaignsConfig) -> TlsFiles | None:
    from edgefleet.common.flower_processes import TlsFiles

    if settings.superlink_certfile and settings.superlink_keyfile and settings.superlink_ca_file:
        return TlsFiles(settings.superlink_certfile, settings.superlink_keyfile, settings.superlink_ca_file)
    return None
