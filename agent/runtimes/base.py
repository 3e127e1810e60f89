"""The runtime interface every inference backend implements, and the registry of backends."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np

from edgefleet.protocol.tensors import TensorSpec

__all__ = ["RUNTIMES", "Runtime", "RuntimeOptions", "register_runtime"]


@dataclass(frozen=True)
class RuntimeOptions:
    """What a backend may take from the device class and the bundle when it loads a model."""

    intra_op_threads: int = 0  # 0: the backend's default
    inter_op_threads: int = 0
    allow_spinning: bool = False  # ONNX Runtime's idle threads busy-wait for work (lower latency, burnt CPU)
    precision: Literal["fp32", "fp16", "int8"] = "fp32"  # what the bundle asks for
    cache_dir: Path | None = None  # engine caches (TensorRT) live here, inside the data dir
    model_digest: str = ""  # sha256 of the model file: part of engine cache keys
    extra: dict[str, str] = field(default_factory=dict)


class Runtime(ABC):
    """One loaded model on one backend. ``run`` is safe to call from several threads."""

    key: ClassVar[str]
    formats: ClassVar[frozenset[str]]  # model formats it loads: "onnx", "tflite"

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """Why this backend cannot run here (missing package, no device), or None if it can."""
        return None

    @abstractmethod
    def __init__(self, model_path: Path, options: RuntimeOptions) -> None: ...

    @property
    @abstractmethod
    def inputs(self) -> list[TensorSpec]: ...

    @property
    @abstractmethod
    def outputs(self) -> list[TensorSpec]: ...

    @abstractmethod
    def run(self, feeds: dict[str, np.ndarray], output_names: list[str]) -> dict[str, np.ndarray]: ...

    def close(self) -> None:  # noqa: B027 - optional hook; most backends free memory on garbage collection
        """Release device memory or engines early."""


RUNTIMES: dict[str, type[Runtime]] = {}


def register_runtime(key: str, *, formats: frozenset[str]) -> Callable[[type[Runtime]], type[Runtime]]:
    """Class decorator: register a backend under ``key`` (e.g. ``onnxruntime-cpu``)."""

    def wrap(cls: type[Runtime]) -> type[Runtime]:
        if key in RUNTIMES:
            raise ValueError(f"runtime {key!r} registered twice")
        cls.key = key
        cls.formats = formats
        RUNTIMES[key] = cls
        return cls

    return wrap
