"""ONNX Runtime on the CPU: the backend every device class can fall back to."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
import onnxruntime as ort
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

from edgefleet.agent.errors import InputError
from edgefleet.agent.runtimes.base import Runtime, RuntimeOptions, register_runtime
from edgefleet.protocol.tensors import TensorSpec, onnx_type_to_dtype

__all__ = ["OnnxCpuRuntime", "OnnxRuntimeBase"]


def _spec(arg: ort.NodeArg) -> TensorSpec:
    shape = [d if isinstance(d, int) and d >= 0 else None for d in (arg.shape or [])]
    return TensorSpec(name=arg.name, dtype=onnx_type_to_dtype(arg.type), shape=shape)


class OnnxRuntimeBase(Runtime):
    """Shared by the ONNX Runtime backends; subclasses choose execution providers."""

    provider: ClassVar[str] = "CPUExecutionProvider"

    def __init__(self, model_path: Path, options: RuntimeOptions) -> None:
        session_options = ort.SessionOptions()
        session_options.intra_op_num_threads = options.intra_op_threads
        session_options.inter_op_num_threads = options.inter_op_threads
        spin = "1" if options.allow_spinning else "0"
        session_options.add_session_config_entry("session.intra_op.allow_spinning", spin)
        session_options.add_session_config_entry("session.inter_op.allow_spinning", spin)
        session_options.log_severity_level = 3
        self.session = ort.InferenceSession(str(model_path), session_options, providers=self.providers(options))
        self._inputs = [_spec(a) for a in self.session.get_inputs()]
        self._outputs = [_spec(a) for a in self.session.get_outputs()]

    def providers(self, options: RuntimeOptions) -> list[str | tuple[str, dict[str, str]]]:
        return [self.provider]

    @property
    def inputs(self) -> list[TensorSpec]:
        return self._inputs

    @property
    def outputs(self) -> list[TensorSpec]:
        return self._outputs

    def run(self, feeds: dict[str, np.ndarray], output_names: list[str]) -> dict[str, np.ndarray]:
        try:
            results = self.session.run(output_names, feeds)
        except InvalidArgument as exc:  # the input fits the signature, not the model (an index out of range)
            raise InputError(f"the model refused the input: {_status_message(exc)}") from None
        return {name: np.asarray(value) for name, value in zip(output_names, results, strict=True)}


def _status_message(exc: Exception) -> str:
    """ONNX Runtime's own reason, without its "[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : ..." prefix."""
    text = str(exc)
    return text.split("Status Message: ", 1)[-1] if "Status Message: " in text else text.rsplit(" : ", 1)[-1]


@register_runtime("onnxruntime-cpu", formats=frozenset({"onnx"}))
class OnnxCpuRuntime(OnnxRuntimeBase):
    provider = "CPUExecutionProvider"
