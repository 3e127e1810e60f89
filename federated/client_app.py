"""The ClientApp a device runs in a campaign: local SGD or DP-SGD on its own samples.

It reads its samples and keeps its privacy ledger where the node's config says (``samples-db``,
``state-dir``; the agent sets both when it starts the SuperNode). The campaign's spec comes in
every train message, so a node needs no configuration per campaign.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import cast

from flwr.app import ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from pydantic import ValidationError

from federated.data import load_samples
from federated.errors import BudgetExhausted, FederatedError, LocalDataError
from federated.models import build_model
from federated.privacy import PrivacyLedger
from federated.spec import CampaignSpec
from federated.strategies import CENTRAL_WEIGHT_KEY, WEIGHT_KEY
from federated.training import LocalData, TrainConfig, evaluate, train
from federated.weights import arrays_to_model, model_to_arrays
from protocol.errors import describe_errors

__all__ = ["BAD_TASK", "BUDGET_EXHAUSTED", "NO_DATA", "app", "handle_evaluate", "handle_train"]

log = logging.getLogger(__name__)

# Error codes of declined train messages (Flower's own codes are below 100).
BUDGET_EXHAUSTED = 4001
NO_DATA = 4002
BAD_TASK = 4003

app = ClientApp()


def _task(msg: Message, device: str) -> tuple[str, CampaignSpec] | Message:
    """The campaign id and spec a message carries, or the decline that says why it carries none."""
    config = msg.content["config"]
    try:
        return str(config["campaign-id"]), CampaignSpec.model_validate_json(str(config["campaign"]))
    except (KeyError, ValidationError) as exc:
        reason = describe_errors(exc) if isinstance(exc, ValidationError) else f"missing {exc}"
        return _decline(msg, BAD_TASK, f"{device}: bad campaign task: {reason}")


def _samples(context: Context, spec: CampaignSpec) -> LocalData:
    samples = Path(str(context.node_config.get("samples-db", "samples.sqlite")))
    data = load_samples(samples, input_name=spec.input_name, label_name=spec.label_name)
    if len(data) < spec.min_samples:
        raise LocalDataError(f"{len(data)} samples, the campaign needs at least {spec.min_samples}")
    return data


@app.train()
def handle_train(msg: Message, context: Context) -> Message:
    device = str(context.node_config.get("device-id", context.node_id))
    task = _task(msg, device)
    if isinstance(task, Message):
        return task
    campaign_id, spec = task
    config = msg.content["config"]
    server_round = int(cast(int, config.get("server-round", 0)))
    try:
        data = _samples(context, spec)
        model = arrays_to_model(
            build_model(spec.architecture, spec.architecture_args), msg.content.array_records["arrays"]
        )
        local_dp = spec.privacy if spec.privacy and spec.privacy.mode == "local" else None
        ledger = None
        if local_dp is not None:
            state_dir = Path(str(context.node_config.get("state-dir", "federated-state")))
            ledger = PrivacyLedger.open(state_dir, campaign_id, accountant=local_dp.accountant, delta=local_dp.delta)
        cfg = TrainConfig(
            epochs=spec.local_epochs,
            batch_size=spec.batch_size,
            learning_rate=spec.learning_rate,
            momentum=spec.momentum,
            loss=spec.loss,
            proximal_mu=float(cast(float, config.get("proximal-mu", 0.0))) if spec.strategy == "fedprox" else 0.0,
            noise_multiplier=local_dp.noise_multiplier if local_dp else None,
            target_epsilon=local_dp.target_epsilon if local_dp else None,
            rounds=spec.rounds,
            clip_norm=local_dp.clip_norm if local_dp else 1.0,
            max_epsilon=local_dp.max_epsilon if local_dp else float("inf"),
        )
        result = train(model, data, cfg, ledger=ledger, server_round=server_round)
    except BudgetExhausted as exc:
        log.warning("campaign %s round %d: %s", campaign_id, server_round, exc.reason)
        return _decline(msg, BUDGET_EXHAUSTED, f"{device}: {exc.reason}")
    except FederatedError as exc:
        log.warning("campaign %s round %d: %s", campaign_id, server_round, exc.reason)
        return _decline(msg, NO_DATA if isinstance(exc, LocalDataError) else BAD_TASK, f"{device}: {exc.reason}")
    metrics: dict[str, int | float | list[int] | list[float]] = {
        WEIGHT_KEY: result.num_examples,
        CENTRAL_WEIGHT_KEY: 1.0,
        "train-loss": result.loss,
        "steps": result.steps,
    }
    if result.epsilon is not None:
        metrics["epsilon"] = result.epsilon
        metrics["noise-multiplier"] = float(result.noise_multiplier or 0.0)
    content = RecordDict(
        {
            "arrays": model_to_arrays(model),
            "metrics": MetricRecord(metrics),
            "client": ConfigRecord({"device-id": device}),
        }
    )
    return Message(content, reply_to=msg)


@app.evaluate()
def handle_evaluate(msg: Message, context: Context) -> Message:
    """Loss (and accuracy) of the global model on this device's samples; refused under DP, whose
    guarantee does not cover statistics of the private samples."""
    device = str(context.node_config.get("device-id", context.node_id))
    task = _task(msg, device)
    if isinstance(task, Message):
        return task
    campaign_id, spec = task
    if spec.privacy is not None or not spec.device_evaluation:
        return _decline(msg, BAD_TASK, f"{device}: campaign {campaign_id} does not allow evaluation on devices")
    try:
        data = _samples(context, spec)
        model = arrays_to_model(
            build_model(spec.architecture, spec.architecture_args), msg.content.array_records["arrays"]
        )
    except FederatedError as exc:
        log.warning("campaign %s evaluation: %s", campaign_id, exc.reason)
        return _decline(msg, NO_DATA if isinstance(exc, LocalDataError) else BAD_TASK, f"{device}: {exc.reason}")
    loss, accuracy = evaluate(model, data, spec.loss)
    metrics: dict[str, int | float | list[int] | list[float]] = {WEIGHT_KEY: len(data), "eval-loss": loss}
    if accuracy is not None:
        metrics["eval-accuracy"] = accuracy
    content = RecordDict({"metrics": MetricRecord(metrics), "client": ConfigRecord({"device-id": device})})
    return Message(content, reply_to=msg)


def _decline(msg: Message, code: int, reason: str) -> Message:
    return Message(error=Error(code=code, reason=reason), reply_to=msg)
