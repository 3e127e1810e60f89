"""Server-side evaluation of the global model on held-out data the coordinator keeps."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord

from edgefleet.federated.errors import CampaignError
from edgefleet.federated.models import build_model
from edgefleet.federated.scoring import LocalData, evaluate
from edgefleet.federated.server.rounds import EvaluateFn
from edgefleet.federated.spec import CampaignSpec
from edgefleet.federated.weights import arrays_to_model

__all__ = ["load_validation", "validation_evaluator"]


def load_validation(spec: CampaignSpec) -> LocalData:
    """The .npz named by ``spec.validation_data``: inputs under input_name (or 'input'), labels under label_name."""
    path = Path(spec.validation_data or "")
    name = spec.input_name or "input"
    try:
        with np.load(path, allow_pickle=False) as data:
            if name not in data.files or spec.label_name not in data.files:
                raise CampaignError(f"validation_data {path} has {data.files}; needs {name!r} and {spec.label_name!r}")
            return LocalData(np.asarray(data[name], np.float32), np.asarray(data[spec.label_name]))
    except (OSError, ValueError) as exc:
        raise CampaignError(f"validation_data {path}: {exc}") from None


def validation_evaluator(spec: CampaignSpec, *, allowed: Collection[str] = ()) -> EvaluateFn | None:
    """Loss (and accuracy for classification) of the global model after each round; None without data."""
    if spec.validation_data is None:
        return None
    data = load_validation(spec)

    def evaluate_fn(_round: int, arrays: ArrayRecord) -> dict[str, float]:
        model = arrays_to_model(build_model(spec.architecture, spec.architecture_args, allowed=allowed), arrays)
        loss, accuracy = evaluate(model, data, spec.loss)
        return {"loss": loss} | ({"accuracy": accuracy} if accuracy is not None else {})

    return evaluate_fn
