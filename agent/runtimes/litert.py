"""LiteRT (TensorFlow Lite) on the CPU with XNNPACK: the backend for .tflite models on ARM boards."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.agent.runtimes.base import Runtime, RuntimeOptions, register_runtime
from edgefleet.protocol.tensors import DTYPES, TensorSpec, c_order

try:
    from ai_edge_litert.interpreter import Interpreter

    PACKAGE = "ai-edge-litert"
except ImportError:
    try:
        # tflite-runtime's last release (2.14, 2023) cannot load models from today's converters:
        # kept only for old devices where ai-edge-litert has no wheel.
        from tflite_runtime.interpreter import Interpreter

        PACKAGE = "tflite-runtime"
    except ImportError as exc:
        raise ImportError("neither ai-edge-litert nor tflite-runtime is installed", name="ai_edge_litert") from exc

__all__ = ["PACKAGE", "LiteRtRuntime"]

log = logging.getLogger(__name__)

# The signature a converter writes for a model's main function.
DEFAULT_SIGNATURE = "serving_default"


def _pick_signature(keys: list[str], extra: dict[str, str]) -> str | None:
    """The signature to serve: the one named in ``extra["tflite_signature"]``, the default, or the only one."""
    wanted = extra.get("tflite_signature")
    if wanted is not None:
        if wanted not in keys:
            raise ValueError(f"the model has no signature {wanted!r}; it has {keys}")
        return wanted
    if DEFAULT_SIGNATURE in keys:
        return DEFAULT_SIGNATURE
    if len(keys) > 1:
        raise ValueError(f"the model has several signatures {keys}; name one with extra.tflite_signature")
    return keys[0] if keys else None


def _spec(name: str, details: dict[str, Any]) -> TensorSpec:
    dtype = np.dtype(details["dtype"]).name
    if dtype not in DTYPES:
        raise ValueError(f"tensor {name!r} has type {dtype}, which the wire contract cannot carry")
    signature = details.get("shape_signature")
    dims = details["shape"] if signature is None or len(signature) == 0 else signature
    return TensorSpec(name=name, dtype=dtype, shape=[int(d) if d >= 0 else None for d in dims])


@register_runtime("litert", formats=frozenset({"tflite"}))
class LiteRtRuntime(Runtime):
    """A .tflite model in one interpreter, served one call at a time (interpreters are not thread-safe).

    Tensors are named by the model's signature (``x``, ``y``) when it has one, which every current
    converter writes; otherwise by the raw tensor names.
    """

    def __init__(self, model_path: Path, options: RuntimeOptions) -> None:
        kwargs: dict[str, Any] = {"model_path": str(model_path)}
        if options.intra_op_threads > 0:
            kwargs["num_threads"] = options.intra_op_threads
        # ai-edge-litert applies XNNPACK by default (OpResolverType.AUTO), so no delegate is named here.
        self._interpreter = Interpreter(**kwargs)
        self._lock = threading.Lock()
        self._signature = _pick_signature(list(self._interpreter.get_signature_list()), options.extra)
        self._runner = None if self._signature is None else self._interpreter.get_signature_runner(self._signature)
        if self._runner is not None:
            inputs = self._runner.get_input_details()
            outputs = self._runner.get_output_details()
        else:
            self._interpreter.allocate_tensors()
            inputs = {d["name"]: d for d in self._interpreter.get_input_details()}
            outputs = {d["name"]: d for d in self._interpreter.get_output_details()}
        self._input_index = {name: int(d["index"]) for name, d in inputs.items()}
        self._output_index = {name: int(d["index"]) for name, d in outputs.items()}
        self._shapes = {name: tuple(int(n) for n in d["shape"]) for name, d in inputs.items()}
        self._inputs = [_spec(name, d) for name, d in inputs.items()]
        self._outputs = [_spec(name, d) for name, d in outputs.items()]
        # litert-torch exports fixed shapes (batch 1): such a model is served as if its batch were
        # dynamic, one row per invoke, so batched requests and the micro-batcher work with it too.
        specs = self._inputs + self._outputs
        self.row_at_a_time = all(spec.shape[:1] == [1] for spec in specs)
        if self.row_at_a_time:
            for spec in specs:
                spec.shape[0] = None
        log.info("litert (%s): loaded %s, signature %s", PACKAGE, model_path.name, self._signature or "none")

    @property
    def inputs(self) -> list[TensorSpec]:
        return self._inputs

    @property
    def outputs(self) -> list[TensorSpec]:
        return self._outputs

    def run(self, feeds: dict[str, np.ndarray], output_names: list[str]) -> dict[str, np.ndarray]:
        unknown = sorted(set(output_names) - set(self._output_index))
        if unknown:
            raise KeyError(f"unknown outputs {unknown}; the model has {sorted(self._output_index)}")
        if self.row_at_a_time:
            rows = {len(a) if a.ndim else 1 for a in feeds.values()}
            if rows != {1}:
                if len(rows) != 1 or 0 in rows:
                    raise ValueError(f"inputs need one batch size of at least 1, got {sorted(rows)}")
                parts = [
                    self._run_once({k: v[i : i + 1] for k, v in feeds.items()}, output_names) for i in range(rows.pop())
                ]
                return {name: np.concatenate([p[name] for p in parts]) for name in output_names}
        return self._run_once(feeds, output_names)

    def _run_once(self, feeds: dict[str, np.ndarray], output_names: list[str]) -> dict[str, np.ndarray]:
        with self._lock:
            if self._runner is not None:
                # Resizes the inputs (a no-op for an unchanged shape), allocates, sets, invokes, copies outputs.
                results = self._runner(**feeds)
                return {name: np.asarray(results[name]) for name in output_names}
            return self._run_tensors(feeds, output_names)

    def _run_tensors(self, feeds: dict[str, np.ndarray], output_names: list[str]) -> dict[str, np.ndarray]:
        resized = False
        for name, array in feeds.items():
            if self._shapes[name] != array.shape:
                self._interpreter.resize_tensor_input(self._input_index[name], list(array.shape), strict=True)
                self._shapes[name] = array.shape
                resized = True
        if resized:
            self._interpreter.allocate_tensors()
        for name, array in feeds.items():
            self._interpreter.set_tensor(self._input_index[name], c_order(array))
        self._interpreter.invoke()
        # get_tensor copies, so the results stay valid after the lock is released.
        return {name: self._interpreter.get_tensor(self._output_index[name]) for name in output_names}
