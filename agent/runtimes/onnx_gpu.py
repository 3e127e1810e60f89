"""ONNX Runtime on NVIDIA GPUs: the CUDA and the TensorRT execution providers."""

from __future__ import annotations

import importlib.metadata
import logging
from pathlib import Path

import onnxruntime as ort

from edgefleet.agent.runtimes.base import RuntimeOptions, register_runtime
from edgefleet.agent.runtimes.onnx_cpu import OnnxRuntimeBase

__all__ = ["OnnxCudaRuntime", "OnnxTensorrtRuntime", "ProviderNotActiveError", "nvidia_device_reason"]

log = logging.getLogger(__name__)

# Any of these means an NVIDIA GPU is visible: the desktop/server driver, or a Jetson's integrated GPU.
_NVIDIA_DEVICE_PATHS = (
    Path("/dev/nvidia0"),
    Path("/proc/driver/nvidia/gpus"),
    Path("/dev/nvhost-ctrl-gpu"),  # Jetson (L4T) before JetPack 6
    Path("/dev/nvgpu/igpu0"),  # Jetson Orin, JetPack 6
)


class ProviderNotActiveError(RuntimeError):
    """ONNX Runtime created the session but without the execution provider this backend stands for."""

    def __init__(self, provider: str, active: list[str]) -> None:
        super().__init__(f"{provider} not active after session creation (ONNX Runtime fell back to {active})")
        self.provider = provider
        self.active = active


def nvidia_device_reason() -> str | None:
    """Why no NVIDIA GPU can be used here, or None when one is visible. Looks at device files only."""
    if any(path.exists() for path in _NVIDIA_DEVICE_PATHS):
        return None
    return "no NVIDIA GPU visible (no /dev/nvidia0, /proc/driver/nvidia/gpus or Jetson GPU device)"


def _missing_provider_reason(provider: str) -> str | None:
    available = ort.get_available_providers()
    if provider in available:
        return None
    try:
        importlib.metadata.version("onnxruntime-gpu")
    except importlib.metadata.PackageNotFoundError:
        return f"{provider} not in this onnxruntime build (CPU-only package onnxruntime {ort.__version__} installed)"
    # onnxruntime-gpu is installed yet the provider is missing: usually the CPU package shadows it.
    return f"{provider} not in this onnxruntime build (onnxruntime {ort.__version__} offers {', '.join(available)})"


class _OnnxGpuRuntime(OnnxRuntimeBase):
    """Checks after loading that ONNX Runtime really uses ``provider``: it falls back to the CPU quietly."""

    def __init__(self, model_path: Path, options: RuntimeOptions) -> None:
        super().__init__(model_path, options)
        active = self.session.get_providers()
        if self.provider not in active:
            raise ProviderNotActiveError(self.provider, active)

    @classmethod
    def unavailable_reason(cls) -> str | None:
        return _missing_provider_reason(cls.provider) or nvidia_device_reason()


@register_runtime("onnxruntime-cuda", formats=frozenset({"onnx"}))
class OnnxCudaRuntime(_OnnxGpuRuntime):
    provider = "CUDAExecutionProvider"

    def providers(self, options: RuntimeOptions) -> list[str | tuple[str, dict[str, str]]]:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]


@register_runtime("onnxruntime-tensorrt", formats=frozenset({"onnx"}))
class OnnxTensorrtRuntime(_OnnxGpuRuntime):
    """TensorRT through ONNX Runtime; subgraphs TensorRT cannot take run on CUDA, then the CPU.

    Engines are cached under ``cache_dir/trt``: building one takes seconds to minutes on a Jetson.
    """

    provider = "TensorrtExecutionProvider"

    def providers(self, options: RuntimeOptions) -> list[str | tuple[str, dict[str, str]]]:
        trt_options: dict[str, str] = {}
        if options.cache_dir is not None:
            cache = options.cache_dir / "trt"
            cache.mkdir(parents=True, exist_ok=True)
            trt_options.update(trt_engine_cache_enable="True", trt_engine_cache_path=str(cache))
        else:
            log.warning("onnxruntime-tensorrt: no cache_dir, so every start rebuilds the TensorRT engine")
        if options.precision == "fp16":
            trt_options["trt_fp16_enable"] = "True"
        elif options.precision == "int8":
            # No calibration table is passed: INT8 applies where the model's Q/DQ nodes give the scales.
            trt_options["trt_int8_enable"] = "True"
        return [("TensorrtExecutionProvider", trt_options), "CUDAExecutionProvider", "CPUExecutionProvider"]
