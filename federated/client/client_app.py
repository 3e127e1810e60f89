"""The ClientApp a device runs in a campaign: local SGD or DP-SGD on its own samples.

It reads its samples and keeps its privacy ledger where the node's config says (``samples-db``,
``state-dir``; the agent sets both when it starts the SuperNode). The campaign's spec comes in
every train message, so a node needs no configuration per campaign.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import cast

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import Code, FitRes, Status
from flwr.compat.common.recorddict_compat import fitres_to_recorddict, recorddict_to_fitins
from pydantic import ValidationError

from edgefleet.common.npy import read_npy
from edgefleet.federated.client.data import load_samples
from edgefleet.federated.client.privacy import PrivacyLedger
from edgefleet.federated.client.training import TrainConfig, train
from edgefleet.federated.errors import BudgetExhausted, FederatedError, LocalDataError
from edgefleet.federated.models import build_model, check_architecture
from edgefleet.federated.scoring import LocalData, evaluate
from edgefleet.federated.secure_aggregation import (
    MAX_WEIGHT,
    array_names,
    is_secure_message,
    update_bound,
    update_parameters,
    values_beyond_range,
    weight_cap,
    weight_of,
)
from edgefleet.federated.spec import CampaignSpec
from edgefleet.federated.weights import arrays_to_model, model_to_arrays
from edgefleet.protocol import campaign as keys
from edgefleet.protocol.campaign import Decline, decline_text
from edgefleet.protocol.errors import describe_errors

__all__ = ["app", "handle_evaluate", "handle_train"]

log = logging.getLogger(__name__)

# Error codes of declined train messages (Flower's own codes are below 100).

app = ClientApp()


def _allowed(context: Context) -> list[str]:
    """The import paths this device's admin allows as architectures (the agent's [federated] architectures)."""
    return [p for p in str(context.node_config.get(keys.ARCHITECTURES, "")).split(",") if p]


def _task(msg: Message, device: str, config: ConfigRecord, context: Context) -> tuple[str, CampaignSpec] | Message:
    """The campaign id and spec a message carries, or the decline that says why it carries none (or names an
    architecture this device does not allow: a message never chooses the code a device runs)."""
    try:
        campaign_id, spec = str(config[keys.CAMPAIGN_ID]), CampaignSpec.model_validate_json(str(config[keys.CAMPAIGN]))
        check_architecture(spec.architecture, _allowed(context))
    except (KeyError, ValidationError) as exc:
        reason = describe_errors(exc) if isinstance(exc, ValidationError) else f"missing {exc}"
        return _decline(msg, Decline.BAD_TASK, f"{device}: bad campaign task: {reason}")
    except FederatedError as exc:
        log.warning("refused a campaign task: %s", exc.reason)
        return _decline(msg, Decline.BAD_TASK, f"{device}: {exc.reason}")
    return campaign_id, spec


def _samples(context: Context, spec: CampaignSpec) -> LocalData:
    samples = Path(str(context.node_config.get(keys.SAMPLES_DB, "samples.sqlite")))
    data = load_samples(samples, input_name=spec.input_name, label_name=spec.label_name)
    if len(data) < spec.min_samples:
        raise LocalDataError(f"{len(data)} samples, the campaign needs at least {spec.min_samples}")
    return data


class SecureAggregationDecline(FederatedError):
    """Raised inside the SecAgg+ mod when this device declines the round: the protocol has no decline
    reply, so the node answers with an error that carries the reason."""


def _secure_aggregation(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Train messages of a campaign with secure aggregation go through Flower's SecAgg+ mod; the rest
    straight to the handler."""
    if not is_secure_message(msg.content):
        return call_next(msg, context)

    def train_or_raise(inner: Message, ctx: Context) -> Message:
        reply = call_next(inner, ctx)
        if reply.has_error():
            raise SecureAggregationDecline(decline_text(reply.error.code, reply.error.reason or ""))
        return reply

    return secaggplus_mod(msg, context, train_or_raise)


@app.train(mods=[_secure_aggregation])
def handle_train(msg: Message, context: Context) -> Message:
    """One round of local training. A plain message carries "arrays" and "config" and is answered
    with the new weights; a SecAgg+ message carries Flower's legacy FitIns and is answered with a
    FitRes holding the update (new - global weights), which the mod masks before it leaves."""
    device = str(context.node_config.get(keys.DEVICE_ID, context.node_id))
    secure = is_secure_message(msg.content)
    if secure:
        fitins = recorddict_to_fitins(msg.content, keep_input=True)
        config = ConfigRecord(dict(fitins.config))
        names = array_names(config)
        arrays = ArrayRecord({n: Array(read_npy(t)) for n, t in zip(names, fitins.parameters.tensors, strict=True)})
    else:
        config, arrays = msg.content.config_records[keys.CONFIG], msg.content.array_records[keys.ARRAYS]
    task = _task(msg, device, config, context)
    if isinstance(task, Message):
        return task
    campaign_id, spec = task
    dp = spec.privacy is not None
    server_round = int(cast(int, config.get(keys.SERVER_ROUND, 0)))
    if (hot := _too_hot(context)) is not None:  # training is optional work: it waits for the chip to cool
        log.warning("campaign %s round %d: %s", campaign_id, server_round, hot)
        return _decline(msg, Decline.THROTTLED, f"{device}: {hot}")
    try:
        data = _samples(context, spec)
        if secure and not dp and len(data) > MAX_WEIGHT:  # under DP every update weighs 1
            log.info("secure aggregation: training on the newest %d of %d samples", MAX_WEIGHT, len(data))
            data = LocalData(data.x[-MAX_WEIGHT:], data.y[-MAX_WEIGHT:])
        model = arrays_to_model(
            build_model(spec.architecture, spec.architecture_args, allowed=_allowed(context)), arrays
        )
        privacy = spec.privacy if spec.privacy and spec.privacy.mode in ("local", "distributed") else None
        ledger = None
        if privacy is not None:
            state_dir = Path(str(context.node_config.get(keys.STATE_DIR, "federated-state")))
            ledger = PrivacyLedger.open(state_dir, campaign_id, accountant=privacy.accountant, delta=privacy.delta)
        distributed = privacy is not None and privacy.mode == "distributed"
        cfg = TrainConfig(
            epochs=spec.local_epochs,
            # Distributed DP: one full-batch step per round, so the sum of the updates is a sum of
            # Gaussian mechanisms (see PrivacySpec).
            batch_size=len(data) if distributed else spec.batch_size,
            learning_rate=spec.learning_rate,
            momentum=spec.momentum,
            loss=spec.loss,
            proximal_mu=float(cast(float, config.get(keys.PROXIMAL_MU, 0.0))) if spec.strategy == "fedprox" else 0.0,
            noise_multiplier=privacy.noise_multiplier if privacy else None,
            target_epsilon=privacy.target_epsilon if privacy else None,
            rounds=spec.rounds,
            clip_norm=privacy.clip_norm if privacy else 1.0,
            max_epsilon=privacy.max_epsilon if privacy else float("inf"),
            noise_shares=spec.min_clients if distributed else 1,
        )
        result = train(model, data, cfg, ledger=ledger, server_round=server_round)
    except BudgetExhausted as exc:
        log.warning("campaign %s round %d: %s", campaign_id, server_round, exc.reason)
        return _decline(msg, Decline.BUDGET_EXHAUSTED, f"{device}: {_sent_reason(exc, spec)}")
    except FederatedError as exc:
        log.warning("campaign %s round %d: %s", campaign_id, server_round, exc.reason)
        code = Decline.NO_DATA if isinstance(exc, LocalDataError) else Decline.BAD_TASK
        return _decline(msg, code, f"{device}: {_sent_reason(exc, spec)}")
    metrics: dict[str, int | float | list[int] | list[float]] = {keys.UNIT_WEIGHT: 1.0}
    if not dp:
        # The sample count, the steps (their number follows from it) and the loss on the private samples
        # are covered by no DP guarantee: Opacus's epsilon is for adding or removing one sample, and the
        # count reveals exactly that change. Sent only without DP, where they weight the mean.
        metrics[keys.NUM_EXAMPLES] = result.num_examples
        metrics[keys.STEPS] = result.steps
        metrics[keys.TRAIN_LOSS] = result.loss
    if result.epsilon is not None:
        metrics[keys.EPSILON] = result.epsilon
        metrics[keys.NOISE_MULTIPLIER] = float(result.noise_multiplier or 0.0)
    if result.local_epsilon is not None:
        metrics[keys.LOCAL_EPSILON] = result.local_epsilon
    new_arrays = model_to_arrays(model)
    if secure:
        update = update_parameters(names, arrays, new_arrays)
        weight = weight_of(result.num_examples, dp=dp)
        clipped = values_beyond_range(update, weight, weight_cap(dp))
        if clipped:
            log.warning("campaign %s round %d: %d values of the update are beyond secure aggregation's range "
                        "+-%g and are clipped", campaign_id, server_round, clipped,
                        update_bound(weight, weight_cap(dp)))  # fmt: skip
        legacy: dict[str, bool | bytes | float | int | str] = {keys.DEVICE_ID: device, keys.CLIPPED_VALUES: clipped}
        legacy.update((k, v) for k, v in metrics.items() if isinstance(v, int | float))
        fitres = FitRes(Status(Code.OK, ""), update, weight, legacy)
        return Message(fitres_to_recorddict(fitres, keep_input=True), reply_to=msg)
    content = RecordDict(
        {
            keys.ARRAYS: new_arrays,
            keys.METRICS: MetricRecord(metrics),
            keys.CLIENT: ConfigRecord({keys.DEVICE_ID: device}),
        }
    )
    return Message(content, reply_to=msg)


@app.evaluate()
def handle_evaluate(msg: Message, context: Context) -> Message:
    """Loss (and accuracy) of the global model on this device's samples; refused under DP, whose
    guarantee does not cover statistics of the private samples."""
    device = str(context.node_config.get(keys.DEVICE_ID, context.node_id))
    task = _task(msg, device, msg.content.config_records[keys.CONFIG], context)
    if isinstance(task, Message):
        return task
    campaign_id, spec = task
    if spec.privacy is not None or not spec.device_evaluation:
        return _decline(msg, Decline.BAD_TASK, f"{device}: campaign {campaign_id} does not allow evaluation on devices")
    try:
        data = _samples(context, spec)
        model = arrays_to_model(
            build_model(spec.architecture, spec.architecture_args, allowed=_allowed(context)),
            msg.content.array_records[keys.ARRAYS],
        )
    except FederatedError as exc:
        log.warning("campaign %s evaluation: %s", campaign_id, exc.reason)
        code = Decline.NO_DATA if isinstance(exc, LocalDataError) else Decline.BAD_TASK
        return _decline(msg, code, f"{device}: {exc.reason}")
    loss, accuracy = evaluate(model, data, spec.loss)
    metrics: dict[str, int | float | list[int] | list[float]] = {keys.NUM_EXAMPLES: len(data), keys.EVAL_LOSS: loss}
    if accuracy is not None:
        metrics[keys.EVAL_ACCURACY] = accuracy
    content = RecordDict({keys.METRICS: MetricRecord(metrics), keys.CLIENT: ConfigRecord({keys.DEVICE_ID: device})})
    return Message(content, reply_to=msg)


def _too_hot(context: Context) -> str | None:
    """The agent's reason while the device is over its class's thermal throttle limit (its marker file)."""
    marker = context.node_config.get(keys.THERMAL_MARKER)
    if not marker:
        return None
    try:
        return Path(str(marker)).read_text().strip() or "the device is over its thermal throttle limit"
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"the thermal marker cannot be read ({exc})"


def _sent_reason(exc: FederatedError, spec: CampaignSpec) -> str:
    """What a decline tells the server. Without DP the device's own reason; under DP a fixed text per
    kind, since "7 samples, the campaign needs at least 10" or the epsilon a round would reach (it
    follows from the sample rate) describe the private samples. The full reason stays in the device's log."""
    if spec.privacy is None:
        return exc.reason
    if isinstance(exc, BudgetExhausted):
        cap = spec.privacy.max_epsilon
        return f"privacy budget: another round would pass the campaign's max epsilon {cap:g}; declining to train"
    if isinstance(exc, LocalDataError):
        return "fewer labelled samples than the campaign needs, or none it can use (the device's log says which)"
    return exc.reason


def _decline(msg: Message, code: int, reason: str) -> Message:
    return Message(error=Error(code=code, reason=reason), reply_to=msg)
