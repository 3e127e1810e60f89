"""Dynamic micro-batching: concurrent single requests run as one batch through the model.

Only a model whose bundle declares batching (``Manifest.batching``, verified when the bundle was built)
is batched, and at most to the smaller of its declared size and the device class's ``max_batch_size``:
a dynamic first dimension alone may be time, not batch. A request waits for company only while other
callers are in flight, and at most ``max_delay``; a lone caller runs the model in its own thread and
pays neither a batching delay nor a hand-off.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from edgefleet.agent.serving.model import LoadedModel

__all__ = ["BatchStats", "MicroBatcher"]

log = logging.getLogger(__name__)

Outputs = dict[str, np.ndarray]


@dataclass
class _Request:
    model: LoadedModel
    inputs: dict[str, np.ndarray]
    output_names: list[str] | None
    limit: int  # rows a batch of this model may hold here
    future: Future[Outputs] = field(default_factory=Future)

    def key(self) -> tuple[object, ...]:
        """Requests with equal keys can share a batch: same model, outputs, dtypes and trailing dims."""
        shapes = tuple(sorted((n, a.dtype.str, a.shape[1:]) for n, a in self.inputs.items()))
        return (id(self.model), tuple(self.output_names or ()), shapes)

    @property
    def rows(self) -> int:
        return int(next(iter(self.inputs.values())).shape[0])


@dataclass
class BatchStats:
    batches: int = 0
    requests: int = 0
    max_rows: int = 0  # the most rows one batch held

    @property
    def mean_batch(self) -> float:
        return self.requests / self.batches if self.batches else 0.0


class MicroBatcher:
    def __init__(self, *, max_batch_size: int, max_delay_ms: float) -> None:
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_ms / 1000.0
        self.stats = BatchStats()
        self._queue: queue.Queue[_Request | None] = queue.Queue()
        self._in_flight = 0  # callers between predict's entry and its return
        self._inline = 0  # of those, the ones running alone in their own thread (not in the queue)
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="batcher", daemon=True)
        self._thread.start()

    def predict(
        self, model: LoadedModel, inputs: dict[str, np.ndarray], output_names: list[str] | None = None
    ) -> Outputs:
        """Run through a shared batch when the model and the inputs allow it; raise what predict raises."""
        limit = self.limit(model)
        if limit <= 1 or not _batchable(model, inputs):
            return model.predict(inputs, output_names)
        with self._lock:
            self._in_flight += 1
            alone = self._in_flight == 1
            if alone:
                self._inline += 1
                self.stats.batches += 1
                self.stats.requests += 1
        try:
            if alone:  # nobody to batch with: run in the caller's thread, without a hand-off
                return model.predict(inputs, output_names)
            request = _Request(model, inputs, output_names, limit)
            self._queue.put(request)
            return request.future.result()
        finally:
            with self._lock:
                self._in_flight -= 1
                if alone:
                    self._inline -= 1

    def limit(self, model: LoadedModel) -> int:
        """Rows one batch of ``model`` may hold: what its bundle declares, lowered by this device class's."""
        declared = model.manifest.batching
        return min(self.max_batch_size, declared.max_batch_size) if declared is not None else 1

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            rows = first.rows
            deadline = time.monotonic() + self.max_delay_s
            while rows < first.limit:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    with self._lock:
                        others_waiting = self._in_flight - self._inline > len(batch)
                    remaining = deadline - time.monotonic()
                    if not others_waiting or remaining <= 0:
                        break
                    try:
                        item = self._queue.get(timeout=remaining)
                    except queue.Empty:
                        break
                if item is None:
                    self._queue.put(None)  # let the loop end after this batch
                    break
                if item.model is not first.model or rows + item.rows > first.limit:
                    self._run([item])  # another model, or too many rows: on its own, not held back
                    continue
                batch.append(item)
                rows += item.rows
            self._run(batch)

    def _run(self, batch: list[_Request]) -> None:
        groups: dict[tuple[object, ...], list[_Request]] = {}
        for request in batch:
            groups.setdefault(request.key(), []).append(request)
        for group in groups.values():
            with self._lock:
                self.stats.batches += 1
                self.stats.requests += len(group)
                self.stats.max_rows = max(self.stats.max_rows, sum(r.rows for r in group))
            if len(group) == 1:
                _settle(group[0])
                continue
            try:
                merged = {name: np.concatenate([r.inputs[name] for r in group]) for name in group[0].inputs}
                outputs = group[0].model.predict(merged, group[0].output_names)
                total = sum(r.rows for r in group)
                if any(value.shape[:1] != (total,) for value in outputs.values()):
                    raise ValueError("outputs are not batched along the first dimension")
            except Exception:
                # One bad member must not fail the others: run each alone to give each its own answer.
                for request in group:
                    _settle(request)
                continue
            start = 0
            for request in group:
                end = start + request.rows
                request.future.set_result({name: value[start:end] for name, value in outputs.items()})
                start = end


def _settle(request: _Request) -> None:
    """Run one request alone and hand its result, or its error, to the waiting caller."""
    try:
        request.future.set_result(request.model.predict(request.inputs, request.output_names))
    except Exception as exc:
        request.future.set_exception(exc)


def _batchable(model: LoadedModel, inputs: dict[str, np.ndarray]) -> bool:
    """The request's inputs agree on their first dimension, and the manifest's shapes have it dynamic."""
    if not inputs or any(s.shape[:1] != [None] for s in model.inputs + model.outputs):
        return False
    sizes = {a.shape[0] if a.ndim else -1 for a in inputs.values()}
    return len(sizes) == 1 and next(iter(sizes)) > 0
