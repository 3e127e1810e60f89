"""The ServerApp a campaign runs on the coordinator's SuperLink (in a `flwr-serverapp` process).

The coordinator writes the campaign's starting weights to ``work-dir`` and passes the spec in the
run config; rounds are recorded in the fleet database as they finish (so the API shows progress),
an abort requested there stops the campaign between rounds, and the final weights and outcome go
back to ``work-dir`` for the coordinator to register.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp

from edgefleet.federated.server.evaluation import validation_evaluator
from edgefleet.federated.server.rounds import CampaignOutcome, RoundRecord, run_rounds
from edgefleet.federated.server.strategies import build_strategy
from edgefleet.federated.spec import CampaignSpec

__all__ = ["APP_DIR", "app", "load_outcome", "read_arrays", "write_arrays"]

log = logging.getLogger(__name__)

app = ServerApp()

# The Flower App (pyproject) submitted for each campaign.
APP_DIR = Path(__file__).resolve().parent.parent / "flower_app"


def write_arrays(path: Path, arrays: ArrayRecord) -> None:
    np.savez(path, **{k: v.numpy() for k, v in arrays.items()})  # type: ignore[arg-type]


def read_arrays(path: Path) -> ArrayRecord:
    with np.load(path, allow_pickle=False) as data:
        return ArrayRecord(array_dict={k: Array(data[k]) for k in data.files})


def load_outcome(work_dir: Path) -> CampaignOutcome:
    data = json.loads((work_dir / "outcome.json").read_text())
    rounds = [RoundRecord(**r) for r in data.pop("rounds")]
    return CampaignOutcome(arrays=read_arrays(work_dir / "result.npz"), rounds=rounds, **data)


class _FleetObserver:
    """Round records into the coordinator's database; abort requests from it."""

    def __init__(self, fleet_db: str, campaign_id: str) -> None:
        from edgefleet.coordinator.campaigns.store import CampaignStore
        from edgefleet.coordinator.store.sqlite import FleetDB

        self.store = CampaignStore(FleetDB(fleet_db))
        self.campaign_id = campaign_id

    def round_finished(self, record: RoundRecord) -> None:
        self.store.record_round(self.campaign_id, record.as_dict())

    def should_abort(self) -> bool:
        return self.store.abort_requested(self.campaign_id)


@app.main()
def main(grid: Grid, context: Context) -> None:
    config = context.run_config
    campaign_id = str(config["campaign-id"])
    spec = CampaignSpec.model_validate_json(str(config["campaign"]))
    work_dir = Path(str(config["work-dir"]))
    observer = _FleetObserver(str(config["fleet-db"]), campaign_id) if config.get("fleet-db") else None
    outcome = run_rounds(
        grid,
        build_strategy(spec),
        spec,
        read_arrays(work_dir / "initial.npz"),
        campaign_id=campaign_id,
        evaluate_fn=validation_evaluator(spec),
        observer=observer,
    )
    write_arrays(work_dir / "result.npz", outcome.arrays)
    summary = {
        "status": outcome.status,
        "reason": outcome.reason,
        "rounds": [r.as_dict() for r in outcome.rounds],
        "initial_evaluation": outcome.initial_evaluation,
        "client_epsilon": outcome.client_epsilon,
        "central_epsilon": outcome.central_epsilon,
    }
    (work_dir / "outcome.json").write_text(json.dumps(summary))
    log.info("campaign %s ended: %s %s", campaign_id, outcome.status, outcome.reason)
