"""Where a client's training data comes from: the agent's sample store (inputs joined with app
feedback labels), and, for benchmarks and tests, non-IID splits of scikit-learn's digits."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np

from edgefleet.agent.learning.samples import SampleStore
from edgefleet.federated.errors import LocalDataError
from edgefleet.federated.scoring import LocalData

__all__ = ["dirichlet_split", "fill_sample_store", "load_samples"]


def load_samples(path: Path, *, input_name: str | None, label_name: str, limit: int = 100_000) -> LocalData:
    """The labelled samples of an agent's store as arrays; clear errors for a missing or mixed store."""
    if not path.is_file():
        raise LocalDataError(f"no sample store at {path}: this device has no labelled samples yet")
    try:
        store = SampleStore(path)
        try:
            rows = store.samples(limit=limit)
        finally:
            store.close()
    except sqlite3.Error as exc:
        raise LocalDataError(f"sample store {path} is unreadable ({exc})") from None
    if not rows:
        raise LocalDataError(f"sample store {path} is empty")
    xs, ys = [], []
    for inputs, labels in rows:
        name = input_name or (next(iter(inputs)) if len(inputs) == 1 else None)
        if name is None or name not in inputs:
            raise LocalDataError(f"samples have inputs {sorted(inputs)}; the campaign needs input {input_name!r}")
        if label_name not in labels:
            raise LocalDataError(f"samples have labels {sorted(labels)}; the campaign needs {label_name!r}")
        x, y = np.asarray(inputs[name]), np.asarray(labels[label_name])
        # A sample may hold one row or a batch of rows (a batched request with its labels).
        xs.append(x if x.ndim > 1 else x[None])
        ys.append(y.reshape(-1) if y.ndim <= 1 else y)
    try:
        return LocalData(np.concatenate(xs).astype(np.float32), np.concatenate(ys))
    except ValueError as exc:
        raise LocalDataError(f"samples in {path} have inconsistent shapes ({exc})") from None


def fill_sample_store(path: Path, x: np.ndarray, y: np.ndarray, *, input_name: str = "input",
                      label_name: str = "label", bundle_digest: str = "0" * 64) -> None:  # fmt: skip
    """Write rows into an agent sample store, as the Feedback API would (benchmarks and tests)."""
    store = SampleStore(path)
    try:
        for i in range(len(x)):
            store.add(f"row-{i}", bundle_digest, {input_name: x[i]}, {label_name: np.asarray(y[i])})
    finally:
        store.close()


def dirichlet_split(
    labels: np.ndarray, clients: int, *, alpha: float, seed: int, min_size: int = 10
) -> list[np.ndarray]:
    """Indices per client, each label spread over clients by Dirichlet(alpha): small alpha, skewed clients."""
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    for _ in range(100):
        parts: list[list[int]] = [[] for _ in range(clients)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(labels == c))
            shares = rng.dirichlet(np.full(clients, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(idx)).astype(int)
            for part, chunk in zip(parts, np.split(idx, cuts), strict=True):
                part.extend(chunk.tolist())
        if min(len(p) for p in parts) >= min_size:
            return [np.array(sorted(p)) for p in parts]
    raise ValueError(f"no Dirichlet({alpha}) split gives every one of {clients} clients {min_size} samples")
