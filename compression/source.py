"""The reference model: a PyTorch module (factory import path, ``torch.save`` file or object) or an ONNX
file, exported once to the FP32 ONNX model every candidate derives from and is measured against."""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import onnxruntime as ort

from edgefleet.compression.builder import describe_onnx
from edgefleet.compression.data import resolve_import
from edgefleet.compression.errors import ExportError, ModelSourceError
from edgefleet.compression.quantized import quantization_of
from edgefleet.protocol.bundle import sha256_file
from edgefleet.protocol.tensors import TensorSpec

if TYPE_CHECKING:
    import torch

__all__ = ["ReferenceModel", "load_reference", "load_torch_module"]

log = logging.getLogger(__name__)


@dataclass
class ReferenceModel:
    onnx_path: Path
    module: torch.nn.Module | None  # None when an ONNX file was given: no pruning or TFLite then
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    digest: str  # sha256 of the FP32 ONNX file: the parent of every candidate
    origin: str
    dynamic_axes: dict[str, dict[int, str]] | None = None
    export_max_error: float | None = None  # PyTorch vs ONNX Runtime on the example rows
    quantized: str | None = None  # what makes a given ONNX file already quantized (compression.quantized)

    @property
    def precision(self) -> Literal["fp32", "int8"]:
        return "int8" if self.quantized is not None else "fp32"

    @property
    def input_names(self) -> list[str]:
        return [s.name for s in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [s.name for s in self.outputs]


def load_torch_module(source: str | Path) -> torch.nn.Module:
    """A module from a factory (``pkg.module:fn``, called without arguments) or a ``torch.save`` file."""
    import torch

    text = str(source)
    if Path(text).is_file():
        try:
            # A full pickled module is code: load only files you trust (as with any torch.save file).
            obj: Any = torch.load(text, map_location="cpu", weights_only=False)
        except Exception as exc:
            raise ModelSourceError(f"{text}: torch.load failed ({type(exc).__name__}: {exc})") from None
        if isinstance(obj, dict):
            raise ModelSourceError(
                f"{text} holds a state_dict, not a module; pass a factory (pkg.module:fn) that builds "
                "the module and loads the weights"
            )
    else:
        try:
            factory = resolve_import(text)
        except (ImportError, ValueError) as exc:
            raise ModelSourceError(f"model {text!r}: neither a file nor an importable factory ({exc})") from None
        if not callable(factory):
            raise ModelSourceError(f"model factory {text!r} is not callable")
        try:
            obj = factory()
        except Exception as exc:
            raise ModelSourceError(f"model factory {text!r} raised {type(exc).__name__}: {exc}") from None
    if not isinstance(obj, torch.nn.Module):
        raise ModelSourceError(f"model {text!r} gave a {type(obj).__name__}, not a torch.nn.Module")
    return obj.eval()


def load_reference(
    model: str | Path | torch.nn.Module,
    out: Path,
    *,
    example: dict[str, np.ndarray],
    output_names: list[str] | None = None,
    dynamic_axes: dict[str, dict[int, str]] | None = None,
    opset: int = 17,
) -> ReferenceModel:
    """Copy an ONNX file, or export a PyTorch model on ``example`` (arrays keyed by input name), to ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(model, str | Path) and str(model).endswith(".onnx"):
        path = Path(model)
        if not path.is_file():
            raise ModelSourceError(f"ONNX file {path} does not exist")
        shutil.copyfile(path, out)
        try:
            session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise ModelSourceError(f"{path}: ONNX Runtime cannot load it ({exc})") from None
        inputs, outputs = describe_onnx(session)
        quantized = quantization_of(out)
        return ReferenceModel(out, None, inputs, outputs, sha256_file(out), f"onnx file {path}", quantized=quantized)
    module = model if not isinstance(model, str | Path) else load_torch_module(model)
    origin = f"pytorch {model}" if isinstance(model, str | Path) else f"pytorch {type(model).__name__}"
    return _export(module, out, example, output_names, dynamic_axes, opset, origin)


def _export(
    module: torch.nn.Module,
    out: Path,
    example: dict[str, np.ndarray],
    output_names: list[str] | None,
    dynamic_axes: dict[str, dict[int, str]] | None,
    opset: int,
    origin: str,
) -> ReferenceModel:
    import torch

    from edgefleet.compression.export import export_onnx

    module.eval()
    names = list(example)
    tensors = tuple(torch.from_numpy(np.ascontiguousarray(example[n])) for n in names)
    try:
        with torch.no_grad():
            result = module(*tensors)
    except Exception as exc:
        raise ExportError(
            f"the model fails on the example input {[list(t.shape) for t in tensors]} "
            f"({type(exc).__name__}: {_first_line(exc)}); check the input shape and dtype"
        ) from None
    results = result if isinstance(result, tuple | list) else (result,)
    if not results or not all(isinstance(r, torch.Tensor) for r in results):
        raise ExportError(f"the model's forward returns {type(result).__name__}; return a tensor or a tuple of them")
    outputs = output_names or (["output"] if len(results) == 1 else [f"output_{i}" for i in range(len(results))])
    if len(outputs) != len(results):
        raise ExportError(f"{len(outputs)} output names given for {len(results)} outputs")
    try:
        export_onnx(
            module, tensors, out, input_names=names, output_names=outputs, dynamic_axes=dynamic_axes, opset=opset
        )
        session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ExportError(
            f"the model does not export to ONNX with torch.onnx (TorchScript exporter, opset {opset}): "
            f"{type(exc).__name__}: {_first_line(exc)}"
        ) from None
    got = session.run(outputs, {n: example[n] for n in names})
    error = max(
        float(np.max(np.abs(np.asarray(g, np.float64) - r.detach().numpy().astype(np.float64)), initial=0.0))
        for g, r in zip(got, results, strict=True)
    )
    if error > 1e-3:
        log.warning("ONNX export differs from PyTorch by up to %.3g on the example rows", error)
    inputs, specs = describe_onnx(session)
    return ReferenceModel(out, module, inputs, specs, sha256_file(out), origin, dynamic_axes, error)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__
