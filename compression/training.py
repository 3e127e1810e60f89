"""A short, deterministic training loop shared by pruning fine-tuning and distillation.

The loss always follows the teacher (the reference model's outputs on the training rows, computed
with ONNX Runtime, so an ONNX reference can teach too) and, where the metric has labels, the labels:
soft targets with a temperature for classification, mean squared error otherwise.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnxruntime as ort

if TYPE_CHECKING:
    import torch

__all__ = ["reference_outputs", "train"]

# Below this many parameters, layers are too small for threads to pay: one thread avoids their
# start-up and, on a busy machine, their spinning.
SMALL_MODEL = 1_000_000


def reference_outputs(onnx_path: str, inputs: dict[str, np.ndarray], batch: int = 256) -> np.ndarray:
    """The first output of the ONNX model on ``inputs``, in batches."""
    session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    output = session.get_outputs()[0].name
    rows = len(next(iter(inputs.values())))
    parts = [
        np.asarray(session.run([output], {n: a[s : s + batch] for n, a in inputs.items()})[0])
        for s in range(0, rows, batch)
    ]
    return np.concatenate(parts)


def train(
    module: torch.nn.Module,
    inputs: dict[str, np.ndarray],
    teacher: np.ndarray,
    labels: np.ndarray | None,
    *,
    task: str,
    epochs: int,
    learning_rate: float,
    batch_size: int,
    temperature: float,
    alpha: float,
    seed: int,
) -> float:
    """Train ``module`` in place on the rows; return the last epoch's mean loss.

    ``task`` is the metric name: ``accuracy`` (soft targets + cross-entropy on labels), ``mse``
    (MSE to teacher + to labels) or ``cosine`` (MSE to the teacher's outputs only).
    """
    import torch

    threads = torch.get_num_threads()
    if sum(p.numel() for p in module.parameters()) < SMALL_MODEL:
        torch.set_num_threads(1)
    try:
        return _fit(module, inputs, teacher, labels, task, epochs, learning_rate, batch_size, temperature, alpha, seed)
    finally:
        torch.set_num_threads(threads)


def _fit(
    module: torch.nn.Module,
    inputs: dict[str, np.ndarray],
    teacher: np.ndarray,
    labels: np.ndarray | None,
    task: str,
    epochs: int,
    learning_rate: float,
    batch_size: int,
    temperature: float,
    alpha: float,
    seed: int,
) -> float:
    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    tensors = [torch.from_numpy(np.ascontiguousarray(a)) for a in inputs.values()]
    target = torch.from_numpy(teacher.astype(np.float32))
    y = torch.from_numpy(labels) if labels is not None and task != "cosine" else None
    optimizer = torch.optim.Adam([p for p in module.parameters() if p.requires_grad], lr=learning_rate)
    rows = len(tensors[0])
    last = 0.0
    module.train()
    for _ in range(epochs):
        order = torch.randperm(rows, generator=generator)
        total, batches = 0.0, 0
        for start in range(0, rows, batch_size):
            idx = order[start : start + batch_size]
            out = module(*(t[idx] for t in tensors))
            out = out[0] if isinstance(out, tuple | list) else out
            if task == "accuracy":
                soft = F.kl_div(
                    F.log_softmax(out / temperature, dim=-1),
                    F.softmax(target[idx] / temperature, dim=-1),
                    reduction="batchmean",
                ) * (temperature * temperature)
                loss = soft if y is None else alpha * F.cross_entropy(out, y[idx].long()) + (1 - alpha) * soft
            else:
                loss = F.mse_loss(out, target[idx])
                if y is not None:
                    loss = (1 - alpha) * loss + alpha * F.mse_loss(out, y[idx].float().reshape(out.shape))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach())
            batches += 1
        last = total / max(batches, 1)
    module.eval()
    return last
