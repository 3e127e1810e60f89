"""The device's part in federated campaigns: a Flower SuperNode, supervised, while one is assigned.

The coordinator's retained campaign assignment names the campaign and its SuperLink; the agent
starts `flower-supernode` with a node config pointing at its labelled samples and a per-campaign
state dir (where the privacy ledger lives), restarts it within a budget if it dies, and stops it
when the assignment is withdrawn or the agent stops. Flower is an optional extra: without it the
agent says so in its reported error instead of failing. The device's SuperNode key (`agent.node_key`)
is made when federated campaigns are on; its public key goes into the reported state, and a SuperNode
for a SuperLink that authenticates nodes is started with it.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from edgefleet.agent.config import FederatedConfig
from edgefleet.agent.learning.node_key import NodeKey, load_or_create_node_key
from edgefleet.agent.telemetry.thermal import MARKER_NAME
from edgefleet.protocol import campaign as keys
from edgefleet.protocol.messages import CampaignAssignment

if TYPE_CHECKING:
    from edgefleet.common.flower_processes import SuperNodeProcess

__all__ = ["FederatedParticipant"]

log = logging.getLogger(__name__)


class FederatedParticipant:
    def __init__(self, device_id: str, data_dir: Path, samples_path: Path, config: FederatedConfig, *,
                 on_change: Callable[[], None] = lambda: None) -> None:  # fmt: skip
        self.device_id, self.data_dir, self.samples_path = device_id, data_dir, samples_path
        self.config, self.on_change = config, on_change
        self.last_error: str | None = None
        self._assignments: queue.Queue[CampaignAssignment] = queue.Queue()
        self._wanted: CampaignAssignment | None = None
        self._node: SuperNodeProcess | None = None
        self._starting: SuperNodeProcess | None = None  # set while its start() waits for registration
        self._restarts = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="federated", daemon=True)
        self.node_key: NodeKey | None = None
        if config.enabled:
            try:
                self.node_key = load_or_create_node_key(data_dir)
            except OSError as exc:  # the agent still serves; a campaign that needs the key says why it can't start
                log.error("no SuperNode authentication key in %s: %s", data_dir, exc)

    @property
    def supernode_public_key(self) -> str | None:
        """PEM public key of the SuperNode key, for the reported state; None when campaigns are off."""
        return self.node_key.public_pem if self.node_key else None

    @property
    def campaign_id(self) -> str | None:
        node, wanted = self._node, self._wanted
        return wanted.campaign_id if node is not None and wanted is not None and node.is_running() else None

    def assign(self, assignment: CampaignAssignment) -> None:
        """From the MQTT thread: starting a SuperNode takes seconds, so the worker thread does it."""
        self._assignments.put(assignment)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop the worker and its SuperNode, also one still starting (registration can take its whole
        startup_timeout_s: waiting it out would outlast the unit's stop timeout and orphan the child)."""
        self._stop.set()
        starting = self._starting
        if starting is not None:
            starting.stop()  # its start() returns at once; the worker thread then sees the stop
        if self._thread.is_alive():
            self._thread.join(timeout=30)
        self._stop_node()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                assignment = self._assignments.get(timeout=1.0)
            except queue.Empty:
                self._supervise()
                continue
            while not self._assignments.empty():  # the newest assignment wins
                assignment = self._assignments.get_nowait()
            self._apply(assignment)

    def _apply(self, assignment: CampaignAssignment) -> None:
        current = self._wanted.campaign_id if self._wanted else None
        if assignment.campaign_id == current and (current is None or self._node is not None):
            return
        self._stop_node()
        self._wanted = assignment if assignment.campaign_id else None
        self._restarts = 0
        self.last_error = None
        if self._wanted is not None:
            if not self.config.enabled:
                self.last_error = f"campaign {assignment.campaign_id} assigned, but federated.enabled is false"
                log.warning("%s", self.last_error)
            else:
                self._start_node()
        self.on_change()

    def _start_node(self) -> None:
        assert self._wanted is not None and self._wanted.campaign_id and self._wanted.superlink
        campaign_id = self._wanted.campaign_id
        try:
            from edgefleet.common.flower_processes import DeploymentError, SuperNodeProcess
        except ImportError as exc:
            self.last_error = f"federated campaigns need the federated extra (pip install edgefleet[federated]): {exc}"
            log.error("%s", self.last_error)
            return
        work = self.data_dir / "federated" / campaign_id
        node_config = {
            keys.DEVICE_ID: self.device_id,
            keys.SAMPLES_DB: str(self.samples_path),
            keys.STATE_DIR: str(self.data_dir / "federated" / "privacy"),
            keys.ARCHITECTURES: ",".join(self.config.architectures),
            keys.THERMAL_MARKER: str(self.data_dir / MARKER_NAME),  # exists while optional work pauses
        }
        auth_key = None
        if self._wanted.node_auth:
            if self.node_key is None:
                self.last_error = (
                    f"campaign {campaign_id}: the SuperLink authenticates nodes and this device has no SuperNode key"
                )
                log.error("%s", self.last_error)
                return
            auth_key = self.node_key.path
        ca = None
        if self._wanted.root_certificate:  # TLS: verify the SuperLink against the CA the coordinator sent
            work.mkdir(parents=True, exist_ok=True)
            ca = work / "superlink-ca.pem"
            ca.write_text(self._wanted.root_certificate)
        node = SuperNodeProcess(
            self._wanted.superlink, node_config, work, root_certificates=ca, auth_private_key=auth_key,
            startup_timeout_s=self.config.startup_timeout_s,
        )  # fmt: skip
        self._starting = node
        try:
            if self._stop.is_set():  # stop() came before _starting was set: it could not reach this node
                return
            self._node = node.start()
            log.info("campaign %s: SuperNode %s joined %s", campaign_id, node.node_id, self._wanted.superlink)
        except (DeploymentError, OSError, ValueError) as exc:
            node.stop()
            if self._stop.is_set():
                log.info("campaign %s: SuperNode stopped while it was starting", campaign_id)
                return
            self.last_error = f"campaign {campaign_id}: SuperNode did not start: {str(exc).splitlines()[0]}"
            log.error("%s", self.last_error)
        finally:
            self._starting = None

    def _supervise(self) -> None:
        if self._wanted is None or not self.config.enabled:
            return
        if self._node is not None and self._node.is_running():
            return
        if self._restarts >= self.config.max_restarts:
            return
        self._restarts += 1
        log.warning("campaign %s: SuperNode is not running; restart %d of %d", self._wanted.campaign_id,
                    self._restarts, self.config.max_restarts)  # fmt: skip
        self._stop_node()
        self._start_node()
        self.on_change()

    def _stop_node(self) -> None:
        node, self._node = self._node, None
        if node is not None:
            node.stop()
