"""The runtime interface every inference backend implements, and the registry of backends."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import numpy as np

from protocol.tensors import TensorSpec

__all__ = ["RUNTIMES", "Runtime", "register_runtime"]


class Runtime(ABC):
    """One loaded model on one backend. ``run`` is safe to call from several threads."""

    key: ClassVar[str]

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """Why this backend cannot run here (missing package, no device), or None if it can."""
        return None

    @abstractmethod
    def __init__(self, model_path: Path) -> None: ...

    @property
    @abstractmethod
    def inputs(self) -> list[TensorSpec]: ...

    @property
    @abstractmethod
    def outputs(self) -> list[TensorSpec]: ...

    @abstractmethod
    def run(self, feeds: dict[str, np.ndarray], output_names: list[str]) -> dict[str, np.ndarray]: ...


RUNTIMES: dict[str, type[Runtime]] = {}


def register_runtime(key: str) -> Callable[[type[Runtime]], type[Runtime]]:
    """Class decorator: register a backend under ``key`` (e.g. ``onnxruntime-cpu``)."""

    def wrap(cls: type[Runtime]) -> type[Runtime]:
        if key in RUNTIMES:
            raise ValueError(f"runtime {key!r} registered twice")
        cls.key = key
        RUNTIMES[key] = cls
        return cls

    return wrap
