"""Engines that run a campaign's rounds: in this process, or on Flower's deployment engine."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from edgefleet.common.flower_processes import SuperLinkProcess, TlsFiles
from edgefleet.coordinator.campaigns.manager import CampaignRun
from edgefleet.federated.client.client_app import app as client_app
from edgefleet.federated.inprocess import InProcessGrid, InProcessNode
from edgefleet.federated.server.rounds import CampaignOutcome, run_rounds
from edgefleet.federated.server.server_app import ABORT_FILE, ROUNDS_FILE, read_rounds
from edgefleet.federated.server.strategies import build_strategy
from edgefleet.protocol import campaign as keys
from edgefleet.protocol.messages import CampaignAssignment

__all__ = ["DeploymentEngine", "InProcessEngine"]

log = logging.getLogger(__name__)

NodeConfig = dict[str, bool | float | int | str]


class InProcessEngine:
    """Runs every selected device's ClientApp in this process against that device's sample store.

    For tests, benchmarks and single-host setups where the coordinator can read the devices' data
    dirs; ``node_config(device_id)`` gives what a SuperNode on that device would be started with.
    """

    def __init__(
        self, node_config: Callable[[str], NodeConfig], *, wrap: Callable[[str, object], object] | None = None
    ):
        self.node_config = node_config
        self.wrap = wrap  # fault injection in tests: wrap a device's ClientApp

    def run(self, run: CampaignRun) -> CampaignOutcome:
        nodes = []
        for device_id in run.devices:
            app = self.wrap(device_id, client_app) if self.wrap else client_app
            config: NodeConfig = {keys.DEVICE_ID: device_id}
            config.update(self.node_config(device_id))
            nodes.append(InProcessNode(app, config))  # type: ignore[arg-type]
        grid = InProcessGrid(nodes)
        try:
            return run_rounds(grid, build_strategy(run.spec), run.spec, run.initial, campaign_id=run.campaign_id,
                              evaluate_fn=run.evaluate_fn, observer=run.observer)  # fmt: skip
        finally:
            grid.close()


class DeploymentEngine:
    """Flower's deployment engine: a SuperLink per campaign on the coordinator's host, a SuperNode on
    every selected device (the agent starts it when it gets the campaign assignment), the campaign's
    ServerApp run on the SuperLink (`federated/flower_app`).

    ``notify(assignment)`` delivers a device's campaign assignment (the coordinator's MQTT link);
    ``advertise_host`` is the address devices reach the SuperLink at.

    With ``tls`` the SuperLink also authenticates SuperNodes (``node_auth``): before the assignments go
    out, the public key each selected device reported is registered with it, and a SuperNode with any
    other key is refused. Flower allows node authentication only over TLS.
    """

    def __init__(
        self,
        work_root: Path,
        notify: Callable[[CampaignAssignment], None],
        *,
        bind_host: str = "127.0.0.1",
        advertise_host: str | None = None,
        tls: TlsFiles | None = None,
        run_margin_s: float = 300.0,
        architectures: list[str] | None = None,
    ) -> None:
        self.tls = tls
        self.node_auth = tls is not None
        self.work_root, self.notify = work_root, notify
        self.architectures = list(architectures or [])  # what the ServerApp may import: the coordinator's list
        self.bind_host, self.advertise_host, self.run_margin_s = bind_host, advertise_host, run_margin_s
        if not self.node_auth:
            log.warning(
                "campaign SuperLinks run without TLS, so without SuperNode authentication (Flower allows it only "
                "over TLS): any SuperNode that reaches one can join; set [campaigns] superlink_certfile, "
                "superlink_keyfile and superlink_ca_file to authenticate them"
            )

    def run(self, run: CampaignRun) -> CampaignOutcome:
        from edgefleet.federated.server.deployment import submit_run
        from edgefleet.federated.server.server_app import APP_DIR, load_outcome, write_arrays

        def relay() -> None:
            """The rounds the ServerApp finished into the coordinator's store; an abort asked there to it."""
            for record in read_rounds(work, len(relayed)):
                run.observer.round_finished(record)
                relayed.append(record.round)
            if run.observer.should_abort():
                (work / ABORT_FILE).touch()

        spec = run.spec
        work = self.work_root / run.campaign_id
        work.mkdir(parents=True, exist_ok=True)
        write_arrays(work / "initial.npz", run.initial)
        for stale in (work / ROUNDS_FILE, work / ABORT_FILE):
            stale.unlink(missing_ok=True)
        relayed: list[int] = []
        link = SuperLinkProcess(work / "superlink", host=self.bind_host, tls=self.tls, node_auth=self.node_auth)
        link.start()
        ca = link.root_certificates
        try:
            if not self.node_auth:
                log.info("campaign %s: SuperLink without TLS: no SuperNode authentication", run.campaign_id)
            devices, refused = self._register_nodes(run, link) if self.node_auth else (list(run.devices), {})
            if len(devices) < spec.min_clients:
                detail = "; ".join(f"{d}: {why}" for d, why in refused.items())
                reason = (
                    f"{len(devices)} of {len(run.devices)} devices could be registered with the campaign's "
                    f"SuperLink, the campaign needs {spec.min_clients} ({detail})"
                )
                return CampaignOutcome("failed", run.initial, [], reason=reason)
            address = f"{self.advertise_host or link.addresses.fleet.rsplit(':', 1)[0]}:{link.port}"
            for device_id in devices:
                self.notify(
                    CampaignAssignment(
                        device_id=device_id,
                        campaign_id=run.campaign_id,
                        superlink=address,
                        root_certificate=ca.decode() if ca else None,
                        node_auth=self.node_auth,
                    )
                )
            budget = spec.rounds * (spec.round_timeout_s + spec.node_wait_s) + self.run_margin_s
            config = {
                keys.CAMPAIGN_ID: run.campaign_id,
                keys.CAMPAIGN: spec.model_dump_json(),
                keys.WORK_DIR: str(work),
                keys.ARCHITECTURES: ",".join(self.architectures),
            }
            result = submit_run(
                APP_DIR, link.addresses.control, config, timeout_s=budget, root_certificates=ca, on_poll=relay
            )
            relay()  # the last rounds, finished after the last look
            if not result.succeeded or not (work / "outcome.json").is_file():
                tail = result.log.strip().splitlines()[-5:]
                reason = f"the campaign's ServerApp run {result.status}:{result.sub_status}: {' | '.join(tail)}"
                return CampaignOutcome("failed", run.initial, [], reason=reason)
            return load_outcome(work)
        finally:
            # Every selected device, registered or not: a retained assignment from an earlier attempt may stand.
            for device_id in run.devices:
                self.notify(CampaignAssignment(device_id=device_id))
            link.stop()

    def _register_nodes(self, run: CampaignRun, link: SuperLinkProcess) -> tuple[list[str], dict[str, str]]:
        """Register each device's reported SuperNode key with the SuperLink: the devices that could be,
        and why each other could not."""
        from edgefleet.common.flower_processes import DeploymentError
        from edgefleet.federated.server.deployment import register_node

        assert link.root_certificates is not None  # node_auth implies TLS
        registered: list[str] = []
        refused: dict[str, str] = {}
        for device_id in run.devices:
            key = run.node_keys.get(device_id)
            if not key:
                refused[device_id] = "reported no SuperNode public key"
                log.warning("campaign %s: %s is left out: %s", run.campaign_id, device_id, refused[device_id])
                continue
            try:
                node_id = register_node(link.addresses.control, key.encode(), link.root_certificates, name=device_id)
            except DeploymentError as exc:
                # e.g. a key already registered: two devices cloned from one data dir share it.
                refused[device_id] = f"the SuperLink refused its SuperNode key: {exc.reason}"
                log.warning("campaign %s: %s is left out: %s", run.campaign_id, device_id, refused[device_id])
                continue
            log.info("campaign %s: registered %s's SuperNode key (node %d)", run.campaign_id, device_id, node_id)
            registered.append(device_id)
        return registered, refused
