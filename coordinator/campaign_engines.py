"""Engines that run a campaign's rounds: in this process, or on Flower's deployment engine."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from coordinator.campaigns import CampaignRun
from federated.client_app import app as client_app
from federated.flower_processes import TlsFiles
from federated.inprocess import InProcessGrid, InProcessNode
from federated.rounds import CampaignOutcome, run_rounds
from federated.strategies import build_strategy
from protocol.messages import CampaignAssignment

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
            config: NodeConfig = {"device-id": device_id}
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
    """

    def __init__(
        self,
        work_root: Path,
        fleet_db: Path,
        notify: Callable[[CampaignAssignment], None],
        *,
        bind_host: str = "127.0.0.1",
        advertise_host: str | None = None,
        tls: TlsFiles | None = None,
        run_margin_s: float = 300.0,
    ) -> None:
        self.tls = tls
        self.work_root, self.fleet_db, self.notify = work_root, fleet_db, notify
        self.bind_host, self.advertise_host, self.run_margin_s = bind_host, advertise_host, run_margin_s

    def run(self, run: CampaignRun) -> CampaignOutcome:
        from federated.deployment import submit_run
        from federated.flower_processes import SuperLinkProcess
        from federated.server_app import APP_DIR, load_outcome, write_arrays

        spec = run.spec
        work = self.work_root / run.campaign_id
        work.mkdir(parents=True, exist_ok=True)
        write_arrays(work / "initial.npz", run.initial)
        link = SuperLinkProcess(work / "superlink", host=self.bind_host, tls=self.tls).start()
        ca = link.root_certificates
        try:
            address = f"{self.advertise_host or link.addresses.fleet.rsplit(':', 1)[0]}:{link.port}"
            for device_id in run.devices:
                self.notify(
                    CampaignAssignment(
                        device_id=device_id,
                        campaign_id=run.campaign_id,
                        superlink=address,
                        root_certificate=ca.decode() if ca else None,
                    )
                )
            budget = spec.rounds * (spec.round_timeout_s + spec.node_wait_s) + self.run_margin_s
            config = {"campaign-id": run.campaign_id, "campaign": spec.model_dump_json(), "work-dir": str(work),
                      "fleet-db": str(self.fleet_db)}  # fmt: skip
            result = submit_run(APP_DIR, link.addresses.control, config, timeout_s=budget, root_certificates=ca)
            if not result.succeeded or not (work / "outcome.json").is_file():
                tail = result.log.strip().splitlines()[-5:]
                reason = f"the campaign's ServerApp run {result.status}:{result.sub_status}: {' | '.join(tail)}"
                return CampaignOutcome("failed", run.initial, [], reason=reason)
            return load_outcome(work)
        finally:
            for device_id in run.devices:
                self.notify(CampaignAssignment(device_id=device_id))
            link.stop()
