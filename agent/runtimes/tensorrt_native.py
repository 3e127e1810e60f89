"""TensorRT's own runtime: builds an engine from the ONNX file on the device, caches it, runs it with cuda-python.

Written against the TensorRT 10 Python API (name-based I/O tensors, ``execute_async_v3``) and
``cuda.bindings.runtime`` from cuda-python for device memory; it needs neither PyTorch nor PyCUDA.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
import re
import threading
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.agent.runtimes.base import Runtime, RuntimeOptions, register_runtime
from edgefleet.agent.runtimes.onnx_gpu import nvidia_device_reason
from edgefleet.protocol.tensors import DTYPES, TensorSpec, c_order

try:
    import tensorrt as trt
except (ImportError, OSError) as exc:  # OSError: the Python package is there but libnvinfer is not
    raise ImportError(f"tensorrt cannot be imported ({exc})", name="tensorrt") from exc

__all__ = ["TensorrtRuntime"]

log = logging.getLogger(__name__)

DEFAULT_MAX_BATCH = 16  # the optimization profile's upper bound when extra["max_batch_size"] does not say


def _import_cudart() -> Any:
    """cuda-python's runtime API: ``cuda.bindings.runtime`` since 12.6, ``cuda.cudart`` before."""
    for name in ("cuda.bindings.runtime", "cuda.cudart"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    return None


cudart = _import_cudart()


def _cuda(result: tuple[Any, ...]) -> Any:
    """Unpack a cuda-python ``(error, *values)`` tuple, raising on any error."""
    err, *values = result
    if err != cudart.cudaError_t.cudaSuccess:
        name = cudart.cudaGetErrorName(err)[1]
        raise RuntimeError(f"CUDA error {name.decode() if isinstance(name, bytes) else name}")
    return values[0] if len(values) == 1 else values


class _TrtLog(trt.ILogger):
    """Sends TensorRT's messages to logging and keeps the last error for the exception that follows it."""

    def __init__(self) -> None:
        trt.ILogger.__init__(self)
        self.last_error = ""

    def log(self, severity: Any, msg: str) -> None:
        if severity in (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR):
            self.last_error = msg
            log.error("TensorRT: %s", msg)
        elif severity == trt.ILogger.Severity.WARNING:
            log.warning("TensorRT: %s", msg)


def _spec(name: str, dtype: Any, shape: Any) -> TensorSpec:
    try:
        np_dtype = np.dtype(trt.nptype(dtype)).name
    except TypeError:
        np_dtype = str(dtype)
    if np_dtype not in DTYPES:
        raise ValueError(f"tensor {name!r} has type {np_dtype}, which the wire contract cannot carry")
    return TensorSpec(name=name, dtype=np_dtype, shape=[int(d) if d >= 0 else None for d in shape])


@register_runtime("tensorrt", formats=frozenset({"onnx"}))
class TensorrtRuntime(Runtime):
    """One engine and one execution context; ``run`` holds a lock since a context serves one call at a time.

    Only the batch dimension (axis 0) of an input may be dynamic: the engine gets one optimization
    profile from batch 1 to ``extra["max_batch_size"]`` (default 16). Device buffers are allocated once
    for the largest batch.
    """

    @classmethod
    def unavailable_reason(cls) -> str | None:
        if int(trt.__version__.split(".")[0]) < 10:
            return f"TensorRT {trt.__version__} found; this backend needs TensorRT 10 or newer"
        if cudart is None:
            return "cuda-python not installed (its cuda.bindings module moves tensors to and from the GPU)"
        return nvidia_device_reason()

    def __init__(self, model_path: Path, options: RuntimeOptions) -> None:
        self._lock = threading.Lock()
        self._buffers: dict[str, int] = {}
        self._stream: Any = None
        self._trt_log = _TrtLog()
        self._max_batch = int(options.extra.get("max_batch_size", DEFAULT_MAX_BATCH))
        if self._max_batch < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {self._max_batch}")
        self._trt_runtime = trt.Runtime(self._trt_log)  # must outlive the engines it deserializes
        self._context: Any = None
        self._engine: Any = self._load_or_build(model_path, options)
        try:
            self._prepare()
        except Exception:
            self.close()
            raise

    def _load_or_build(self, model_path: Path, options: RuntimeOptions) -> Any:
        cache = self._cache_path(model_path, options)
        if cache is not None and (engine := self._load_cached(cache)) is not None:
            log.info("tensorrt: loaded cached engine %s", cache.name)
            return engine
        plan = self._build(model_path, options)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(".tmp")
            tmp.write_bytes(plan)
            os.replace(tmp, cache)  # atomic: a crash mid-write leaves no half engine to load next time
            log.info("tensorrt: built and cached engine %s", cache.name)
        engine = self._trt_runtime.deserialize_cuda_engine(plan)
        if engine is None:
            raise RuntimeError(f"TensorRT could not load the engine it built: {self._trt_log.last_error}")
        return engine

    def _cache_path(self, model_path: Path, options: RuntimeOptions) -> Path | None:
        """The engine file for this model, GPU, TensorRT version, precision and batch bound."""
        if options.cache_dir is None:
            log.warning("tensorrt: no cache_dir, so every start rebuilds the engine")
            return None
        digest = options.model_digest or hashlib.sha256(model_path.read_bytes()).hexdigest()
        props = _cuda(cudart.cudaGetDeviceProperties(0))
        gpu = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
        gpu_slug = re.sub(r"[^A-Za-z0-9]+", "-", gpu.strip("\x00 ")).strip("-").lower()
        name = f"{digest}-{gpu_slug}-sm{props.major}{props.minor}-trt{trt.__version__}-{options.precision}"
        return options.cache_dir / "trt-native" / f"{name}-b{self._max_batch}.engine"

    def _load_cached(self, path: Path) -> Any:
        if not path.exists():
            return None
        engine = self._trt_runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            log.warning(
                "tensorrt: cached engine %s does not load (%s); rebuilding", path.name, self._trt_log.last_error
            )
            path.unlink(missing_ok=True)
        return engine

    def _build(self, model_path: Path, options: RuntimeOptions) -> bytes:
        builder = trt.Builder(self._trt_log)
        network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
        parser = trt.OnnxParser(network, self._trt_log)
        if not parser.parse_from_file(str(model_path)):  # from the file, so external weight files are found
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise ValueError(f"TensorRT cannot parse {model_path.name}: {errors or self._trt_log.last_error}")
        config = builder.create_builder_config()
        self._set_precision(config, options.precision)
        profile = builder.create_optimization_profile()
        dynamic = False
        for i in range(network.num_inputs):
            tensor = network.get_input(i)
            shape = list(tensor.shape)
            if all(d >= 0 for d in shape):
                continue
            if not shape or any(d < 0 for d in shape[1:]):
                raise ValueError(f"input {tensor.name!r} has shape {shape}: only axis 0 (the batch) may be dynamic")
            dynamic = True
            # opt = 1: on an edge device single requests are the common case.
            profile.set_shape(tensor.name, min=[1, *shape[1:]], opt=[1, *shape[1:]], max=[self._max_batch, *shape[1:]])
        if dynamic:
            config.add_optimization_profile(profile)
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise RuntimeError(f"TensorRT could not build an engine for {model_path.name}: {self._trt_log.last_error}")
        return bytes(plan)

    @staticmethod
    def _set_precision(config: Any, precision: str) -> None:
        if precision == "fp32":
            return
        flag = getattr(trt.BuilderFlag, precision.upper(), None)
        if flag is None:
            # TensorRT 11 removed the precision flags: networks are strongly typed, the ONNX types decide.
            log.info("tensorrt %s: precision %s comes from the model's own types", trt.__version__, precision)
            return
        config.set_flag(flag)
        if precision == "int8":
            # INT8 needs scales (Q/DQ nodes); layers without them may then run in FP16 rather than FP32.
            config.set_flag(trt.BuilderFlag.FP16)

    def _prepare(self) -> None:
        """Create the context, describe the I/O tensors and allocate device buffers for the largest batch."""
        engine = self._engine
        self._context = engine.create_execution_context()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        input_names = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._inputs = [_spec(n, engine.get_tensor_dtype(n), engine.get_tensor_shape(n)) for n in input_names]
        self._outputs = [
            _spec(n, engine.get_tensor_dtype(n), engine.get_tensor_shape(n)) for n in names if n not in input_names
        ]
        self._dtypes = {spec.name: np.dtype(spec.dtype) for spec in [*self._inputs, *self._outputs]}
        for spec in self._inputs:
            largest = [self._max_batch if d is None else d for d in spec.shape]
            if not self._context.set_input_shape(spec.name, largest):
                raise RuntimeError(f"TensorRT refused shape {largest} for input {spec.name!r}")
        self._stream = _cuda(cudart.cudaStreamCreate())
        for name in names:
            shape = list(self._context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise ValueError(
                    f"output {name!r} has a data-dependent shape {shape}, which this backend does not serve"
                )
            nbytes = max(int(np.prod(shape, dtype=np.int64)) * self._dtypes[name].itemsize, 1)
            self._buffers[name] = _cuda(cudart.cudaMalloc(nbytes))
            self._context.set_tensor_address(name, self._buffers[name])

    @property
    def inputs(self) -> list[TensorSpec]:
        return self._inputs

    @property
    def outputs(self) -> list[TensorSpec]:
        return self._outputs

    def run(self, feeds: dict[str, np.ndarray], output_names: list[str]) -> dict[str, np.ndarray]:
        unknown = sorted(set(output_names) - {spec.name for spec in self._outputs})
        if unknown:
            raise KeyError(f"unknown outputs {unknown}; the model has {[spec.name for spec in self._outputs]}")
        to_device = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        to_host = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        with self._lock:
            staged = []  # host arrays must outlive the asynchronous copies
            for name, array in feeds.items():
                host = c_order(array)
                if host.dtype != self._dtypes[name]:
                    raise ValueError(f"input {name!r} is {host.dtype}, the engine expects {self._dtypes[name]}")
                if not self._context.set_input_shape(name, list(host.shape)):
                    raise ValueError(
                        f"input {name!r} of shape {list(host.shape)} is outside the engine's profile "
                        f"(batch 1 to {self._max_batch})"
                    )
                _cuda(
                    cudart.cudaMemcpyAsync(self._buffers[name], host.ctypes.data, host.nbytes, to_device, self._stream)
                )
                staged.append(host)
            if not self._context.execute_async_v3(int(self._stream)):
                raise RuntimeError(f"TensorRT execution failed: {self._trt_log.last_error}")
            results = {}
            for name in output_names:
                out = np.empty(tuple(self._context.get_tensor_shape(name)), dtype=self._dtypes[name])
                _cuda(cudart.cudaMemcpyAsync(out.ctypes.data, self._buffers[name], out.nbytes, to_host, self._stream))
                results[name] = out
            _cuda(cudart.cudaStreamSynchronize(self._stream))
            return results

    def close(self) -> None:
        with self._lock:
            # Best effort: a failed free is logged, not raised, so that the rest is still released.
            for pointer in self._buffers.values():
                err = cudart.cudaFree(pointer)[0]
                if err != cudart.cudaError_t.cudaSuccess:
                    log.warning("tensorrt: cudaFree failed: %s", err)
            self._buffers.clear()
            if self._stream is not None:
                cudart.cudaStreamDestroy(self._stream)
                self._stream = None
            self._context = None
            self._engine = None
