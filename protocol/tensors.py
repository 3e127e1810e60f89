"""Tensor descriptions and an exact, portable encoding of tensor values (dtype + shape + raw bytes)."""

from __future__ import annotations

import base64
import math
from typing import Annotated

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from edgefleet.protocol.errors import ProtocolError
from edgefleet.protocol.grpc_gen import inference_pb2

__all__ = [
    "DTYPES",
    "MAX_ELEMENTS",
    "TensorData",
    "TensorSpec",
    "array_from_bytes",
    "c_order",
    "check_against_spec",
    "onnx_type_to_dtype",
    "tensor_from_proto",
    "tensor_to_proto",
]

MAX_ELEMENTS = 2**62  # elements of one tensor: any more overflow the 64-bit sizes runtimes compute with

# numpy dtype names that the wire contract accepts; all little-endian.
DTYPES = (
    "float16",
    "float32",
    "float64",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "bool",
)

_ONNX_TYPES = {
    "tensor(float16)": "float16",
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(int8)": "int8",
    "tensor(int16)": "int16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(uint8)": "uint8",
    "tensor(uint16)": "uint16",
    "tensor(uint32)": "uint32",
    "tensor(uint64)": "uint64",
    "tensor(bool)": "bool",
}

Dim = Annotated[int, Field(ge=0)] | None


def onnx_type_to_dtype(onnx_type: str) -> str:
    """Map ONNX Runtime's ``tensor(float)`` style names to numpy dtype names."""
    try:
        return _ONNX_TYPES[onnx_type]
    except KeyError:
        raise ProtocolError(f"unsupported tensor type {onnx_type}") from None


class TensorSpec(BaseModel):
    """Name, dtype and shape of a model input or output; ``None`` marks a dynamic dimension."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=256)
    dtype: str = Field(pattern="^(" + "|".join(DTYPES) + ")$")
    shape: list[Dim] = Field(max_length=16)


class TensorData(BaseModel):
    """A tensor value: dtype, shape and base64 of its little-endian C-order bytes."""

    model_config = ConfigDict(extra="forbid")

    dtype: str = Field(pattern="^(" + "|".join(DTYPES) + ")$")
    shape: list[Annotated[int, Field(ge=0)]] = Field(max_length=16)
    data: str

    @classmethod
    def from_array(cls, array: np.ndarray) -> TensorData:
        arr = c_order(array)
        dtype = arr.dtype.newbyteorder("<")
        return cls(
            dtype=arr.dtype.name,
            shape=list(arr.shape),
            data=base64.b64encode(arr.astype(dtype, copy=False).tobytes()).decode("ascii"),
        )

    def to_array(self) -> np.ndarray:
        try:
            raw = base64.b64decode(self.data, validate=True)
        except ValueError as exc:
            raise ProtocolError(f"tensor data is not valid base64: {exc}") from None
        return array_from_bytes(raw, self.dtype, self.shape)


def c_order(array: np.ndarray) -> np.ndarray:
    """The array in C order, copied only if it is not already; a scalar (rank 0) stays a scalar
    (``np.ascontiguousarray`` would make it shape [1])."""
    return np.asarray(array, order="C")


def tensor_to_proto(array: np.ndarray) -> inference_pb2.Tensor:
    """The local API's Tensor message: dtype, shape (empty for a scalar) and little-endian C-order bytes."""
    arr = c_order(array)
    return inference_pb2.Tensor(
        dtype=arr.dtype.name, shape=list(arr.shape), data=arr.astype(arr.dtype.newbyteorder("<")).tobytes()
    )


def tensor_from_proto(tensor: inference_pb2.Tensor) -> np.ndarray:
    return array_from_bytes(tensor.data, tensor.dtype, list(tensor.shape))


def array_from_bytes(raw: bytes, dtype: str, shape: list[int]) -> np.ndarray:
    """Rebuild an array, raising ProtocolError when the byte count does not match dtype and shape."""
    if dtype not in DTYPES:
        raise ProtocolError(f"unsupported dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
    np_dtype = np.dtype(dtype).newbyteorder("<")
    if any(d < 0 for d in shape):
        raise ProtocolError(f"negative dimension in shape {shape}")
    elements = math.prod(shape)  # Python integers: numpy's int64 product wraps around (2**62 x 4 is 0)
    if elements > MAX_ELEMENTS:
        raise ProtocolError(f"shape {shape} has {elements} elements; at most {MAX_ELEMENTS} can be held")
    expected = elements * np_dtype.itemsize
    if len(raw) != expected:
        raise ProtocolError(f"tensor of dtype {dtype} and shape {shape} needs {expected} bytes, got {len(raw)}")
    return np.frombuffer(raw, dtype=np_dtype).reshape(shape).astype(np.dtype(dtype), copy=False)


def check_against_spec(array: np.ndarray, spec: TensorSpec) -> None:
    """Raise ProtocolError with a precise reason when ``array`` does not fit ``spec``."""
    if array.dtype.name != spec.dtype:
        raise ProtocolError(f"input {spec.name!r}: dtype {array.dtype.name}, model expects {spec.dtype}")
    if array.ndim != len(spec.shape):
        raise ProtocolError(
            f"input {spec.name!r}: rank {array.ndim} (shape {list(array.shape)}), "
            f"model expects rank {len(spec.shape)} (shape {_fmt(spec.shape)})"
        )
    for axis, (got, want) in enumerate(zip(array.shape, spec.shape, strict=True)):
        if want is not None and got != want:
            raise ProtocolError(
                f"input {spec.name!r}: dimension {axis} is {got}, model expects {want} (shape {_fmt(spec.shape)})"
            )


def _fmt(shape: list[int | None]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"
