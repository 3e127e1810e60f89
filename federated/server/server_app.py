"""The ServerApp a campaign runs on the coordinator's SuperLink (in a `flwr-serverapp` process).

The coordinator writes the campaign's starting weights to ``work-dir`` and passes the spec in the
run config. Everything goes back through ``work-dir``, never into the coordinator's database: each
finished round is appended to ``rounds.jsonl`` (the coordinator relays it to its store while the run
goes on, so the API shows progress), a file ``abort`` there stops the campaign between rounds, and
the final weights and outcome are written for the coordinator to register.
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
from edgefleet.protocol import campaign as keys

__all__ = [
    "ABORT_FILE",
    "APP_DIR",
    "ROUNDS_FILE",
    "RoundJournal",
    "app",
    "load_outcome",
    "read_arrays",
    "read_rounds",
    "write_arrays",
]

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


ROUNDS_FILE = "rounds.jsonl"
ABORT_FILE = "abort"


class RoundJournal:
    """The ServerApp's side of the work dir: finished rounds appended one JSON line each, aborts read."""

    def __init__(self, work_dir: Path) -> None:
        self.rounds = work_dir / ROUNDS_FILE
        self.abort = work_dir / ABORT_FILE

    def round_finished(self, record: RoundRecord) -> None:
        with self.rounds.open("a") as fh:
            fh.write(json.dumps(record.as_dict()) + "\n")

    def should_abort(self) -> bool:
        return self.abort.exists()


def read_rounds(work_dir: Path, seen: int) -> list[RoundRecord]:
    """The rounds appended to the journal after the first ``seen`` (whole lines only)."""
    try:
        text = (work_dir / ROUNDS_FILE).read_text()
    except FileNotFoundError:
        return []
    lines = text.split("\n")[:-1]  # a line still being written has no newline yet
    return [RoundRecord(**json.loads(line)) for line in lines[seen:]]


def _allowed(value: object) -> list[str]:
    """The import paths the coordinator's config allows (its run config carries them)."""
    return [p for p in str(value or "").split(",") if p]


@app.main()
def main(grid: Grid, context: Context) -> None:
    config = context.run_config
    campaign_id = str(config[keys.CAMPAIGN_ID])
    spec = CampaignSpec.model_validate_json(str(config[keys.CAMPAIGN]))
    work_dir = Path(str(config[keys.WORK_DIR]))
    observer = RoundJournal(work_dir)
    outcome = run_rounds(
        grid,
        build_strategy(spec),
        spec,
        read_arrays(work_dir / "initial.npz"),
        campaign_id=campaign_id,
        evaluate_fn=validation_evaluator(spec, allowed=_allowed(config.get(keys.ARCHITECTURES))),
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
