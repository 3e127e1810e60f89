"""ONNX Runtime on the CPU: the backend every device class can fall back to."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from agent.runtimes.base import Runtime, register_runtime
from protocol.tensors import TensorSpec, onnx_type_to_dtype

__all__ = ["OnnxCpuRuntime"]


def _spec(arg: ort.NodeArg) -> TensorSpec:
    shape = [d if isinstance(d, int) and d >= 0 else None for d in (arg.shape or [])]
    return TensorSpec(name=arg.name, dtype=onnx_type_to_dtype(arg.type), shape=shape)


@register_runtime("onnxruntime-cpu")
class OnnxCpuRuntime(Runtime):
    providers = ("CPUExecutionProvider",)

    def __init__(self, model_path: Path, *, intra_op_threads: int = 0) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(model_path), options, providers=list(self.providers))
        self._inputs = [_spec(a) for a in self.session.get_inputs()]
        self._outputs = [_spec(a) for a in self.session.get_outputs()]

    @property
    def inputs(self) -> list[TensorSpec]:
        return self._inputs

    @property
    def outputs(self) -> list[TensorSpec]:
        return self._outputs

    def run(self, feeds: dict[str, np.ndarray], output_names: list[str]) -> dict[str, np.ndarray]:
        results = self.session.run(output_names, feeds)
        return {name: np.asarray(value) for name, value in zip(output_names, results, strict=True)}
