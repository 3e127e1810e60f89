"""Model weights between PyTorch, Flower's ArrayRecord and the ONNX files of the registry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from flwr.app import Array, ArrayRecord

from edgefleet.common.npy import read_npy
from edgefleet.federated.errors import CampaignError

__all__ = ["array_to_numpy", "arrays_to_model", "load_onnx_weights", "model_to_arrays"]


def array_to_numpy(array: Array) -> np.ndarray:
    """Like ``Array.numpy()``, without numpy's header parser (not thread-safe on CPython 3.11, and
    in-process campaign clients decode their weights in threads at once)."""
    return read_npy(array.data) if array.stype == "numpy.ndarray" else array.numpy()


def model_to_arrays(model: torch.nn.Module) -> ArrayRecord:
    return ArrayRecord(torch_state_dict={k: v.detach().cpu().clone() for k, v in model.state_dict().items()})


def arrays_to_model(model: torch.nn.Module, arrays: ArrayRecord) -> torch.nn.Module:
    """Load ``arrays`` into ``model``; names and shapes must match exactly."""
    expected = model.state_dict()
    got = {k: array_to_numpy(v) for k, v in arrays.items()}
    missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
    if missing or extra:
        raise CampaignError(f"weights do not fit the model: missing {missing[:5]}, unexpected {extra[:5]}")
    for key, tensor in expected.items():
        if tuple(tensor.shape) != got[key].shape:
            raise CampaignError(f"weight {key}: shape {got[key].shape} but the model has {tuple(tensor.shape)}")
    model.load_state_dict({k: torch.from_numpy(np.array(got[k], dtype=np.float32)) for k in expected}, strict=True)
    return model


def load_onnx_weights(model: torch.nn.Module, onnx_path: Path) -> torch.nn.Module:
    """Set ``model``'s parameters from the initializers of an FP32 ONNX file exported from the same
    architecture (the TorchScript exporter keeps state_dict names such as ``0.weight``)."""
    import onnx
    from onnx import numpy_helper

    try:
        graph = onnx.load(str(onnx_path)).graph
    except Exception as exc:
        raise CampaignError(f"{onnx_path}: not a readable ONNX model ({exc})") from None
    initializers = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    state = model.state_dict()
    loaded: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        array = initializers.get(key)
        if array is None:
            if key.endswith(("running_mean", "running_var", "num_batches_tracked")):
                loaded[key] = tensor
                continue
            raise CampaignError(
                f"the base model's ONNX file has no weight named {key!r}: it was not exported from this "
                f"architecture (its weights: {sorted(initializers)[:8]})"
            )
        if array.dtype != np.float32:
            raise CampaignError(f"weight {key} is {array.dtype} in the ONNX file: train from the FP32 bundle")
        if tuple(array.shape) != tuple(tensor.shape):
            raise CampaignError(
                f"weight {key}: shape {array.shape} in the ONNX file, {tuple(tensor.shape)} in the model"
            )
        loaded[key] = torch.from_numpy(array.copy())
    model.load_state_dict(loaded, strict=True)
    return model
