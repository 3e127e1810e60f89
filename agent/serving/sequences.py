"""Sequence serving: the state tensors of live sequences, kept on the agent between their requests.

A bundle whose manifest declares ``sequence`` (protocol.model_card.SequenceSpec) says which outputs feed
which inputs from one request of a sequence to the next. An app names a sequence id, starts it, sends its
chunks and ends it; the agent feeds the state inputs (zeros at the start) and keeps the state outputs.
A sequence belongs to the bundle it started on: after a model switch it must start again, never run on
with state another model made. Live sequences are bounded (``max_sequences``: a new one beyond that is
RESOURCE_EXHAUSTED) and dropped after ``idle_timeout_s`` unused; a request for a sequence that is not live
(never started, ended, expired) is refused rather than silently restarted from zeros.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from edgefleet.agent.serving.model import LoadedModel
from edgefleet.protocol.model_card import SequenceSpec
from edgefleet.protocol.tensors import TensorSpec

__all__ = ["SequenceError", "Sequences"]

MAX_SEQUENCE_ID = 128


class SequenceError(Exception):
    """A sequence request the agent refuses; ``code`` is the gRPC status name it deserves."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code, self.reason = code, reason


@dataclass
class _Live:
    digest: str
    state: dict[str, np.ndarray]
    used: float
    lock: threading.Lock = field(default_factory=threading.Lock)


def initial_state(spec: TensorSpec) -> np.ndarray:
    """Zeros of the state input's shape, a dynamic dimension taken as 1."""
    return np.zeros([1 if d is None else d for d in spec.shape], dtype=np.dtype(spec.dtype))


class Sequences:
    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._live: dict[str, _Live] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._live)

    def run(
        self, model: LoadedModel, sequence_id: str, inputs: dict[str, np.ndarray], output_names: list[str] | None,
        *, start: bool, end: bool, predict: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]],
    ) -> dict[str, np.ndarray]:  # fmt: skip
        """One step of ``sequence_id``: its state joined to ``inputs``, run by ``predict`` (all outputs), the
        state outputs kept; returns the outputs asked for (default: all but the state outputs)."""
        spec = model.manifest.sequence
        if spec is None:
            raise SequenceError("INVALID_ARGUMENT", f"bundle {model.manifest.name} declares no sequence states")
        if len(sequence_id) > MAX_SEQUENCE_ID:
            raise SequenceError("INVALID_ARGUMENT", f"a sequence id has at most {MAX_SEQUENCE_ID} characters")
        kept = sorted(set(inputs) & {s.input for s in spec.states})
        if kept:
            raise SequenceError("INVALID_ARGUMENT", f"state inputs {kept} are kept by the agent in a sequence")
        live = self._open(model, spec, sequence_id, start=start)
        with live.lock:
            outputs = predict(inputs | live.state)
            live.state = {s.input: outputs[s.output] for s in spec.states}
            live.used = self._clock()
        if end:
            with self._lock:
                self._live.pop(sequence_id, None)
        state_outputs = {s.output for s in spec.states}
        names = output_names or [o.name for o in model.outputs if o.name not in state_outputs]
        return {name: outputs[name] for name in names}

    def _open(self, model: LoadedModel, spec: SequenceSpec, sequence_id: str, *, start: bool) -> _Live:
        now = self._clock()
        with self._lock:
            for key in [k for k, s in self._live.items() if now - s.used > spec.idle_timeout_s]:
                del self._live[key]
            live = self._live.get(sequence_id)
            if live is not None and live.digest != model.digest and not start:
                del self._live[sequence_id]
                raise SequenceError(
                    "FAILED_PRECONDITION",
                    f"sequence {sequence_id!r} began on bundle {live.digest[:12]}, and {model.digest[:12]} is active "
                    "now: start it again (sequence_start)",
                )
            if start:
                if live is None and len(self._live) >= spec.max_sequences:
                    raise SequenceError(
                        "RESOURCE_EXHAUSTED",
                        f"{len(self._live)} sequences are live (the bundle allows {spec.max_sequences}): end one "
                        f"(sequence_end) or let one idle for {spec.idle_timeout_s:g} s",
                    )
                specs = {s.name: s for s in model.inputs}
                live = _Live(model.digest, {s.input: initial_state(specs[s.input]) for s in spec.states}, now)
                self._live[sequence_id] = live
            elif live is None:
                raise SequenceError(
                    "FAILED_PRECONDITION",
                    f"sequence {sequence_id!r} is not live (never started, ended, or idle over "
                    f"{spec.idle_timeout_s:g} s): send sequence_start",
                )
            return live
