"""Labelled rows and a model's loss and accuracy on them: the same figures on the server's held-out
data (server/evaluation.py) and in a device's training and evaluation (client/)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from edgefleet.federated.errors import LocalDataError

__all__ = ["LocalData", "evaluate", "loss_fn", "tensors"]


@dataclass
class LocalData:
    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.x)


def loss_fn(kind: str) -> torch.nn.Module:
    return torch.nn.CrossEntropyLoss() if kind == "cross_entropy" else torch.nn.MSELoss()


def tensors(data: LocalData, loss: str) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.from_numpy(np.ascontiguousarray(data.x, dtype=np.float32))
    if loss == "cross_entropy":
        y = torch.from_numpy(np.ascontiguousarray(data.y).astype(np.int64).reshape(-1))
    else:
        y = torch.from_numpy(np.ascontiguousarray(data.y, dtype=np.float32))
    if len(x) != len(y):
        raise LocalDataError(f"{len(x)} inputs but {len(y)} labels")
    return x, y


def evaluate(model: torch.nn.Module, data: LocalData, loss: str = "cross_entropy") -> tuple[float, float | None]:
    """Mean loss and (for classification) accuracy on ``data``."""
    x, y = tensors(data, loss)
    model.eval()
    with torch.no_grad():
        out = model(x)
        value = float(loss_fn(loss)(out, y))
        accuracy = float((out.argmax(dim=1) == y).float().mean()) if loss == "cross_entropy" else None
    return value, accuracy
