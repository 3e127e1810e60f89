"""Inputs in POSIX shared memory: a large tensor reaches the model without being copied through the socket.

An app on the device writes the tensor into a segment (``/dev/shm/edgefleet-...``; agent/serving/client.py's
``SharedInput`` makes one) and sends its name and offset in the request's Tensor instead of the bytes, as
Triton's shared-memory extension and Frigate do. The agent maps the segment read-only for the request and
hands the model a view of it. Only segments whose name begins with ``edgefleet-`` are opened, so a request
cannot make the agent read another program's shared memory; whoever may use the agent's socket may use this.
The app must not change the segment until the answer is back.
"""

from __future__ import annotations

import math
import mmap
import os
import re
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from edgefleet.protocol.errors import ProtocolError
from edgefleet.protocol.grpc_gen import inference_pb2
from edgefleet.protocol.tensors import DTYPES, MAX_ELEMENTS, tensor_from_proto

__all__ = ["SHM_DIR", "SHM_PREFIX", "input_from_proto"]

SHM_DIR = Path("/dev/shm")
SHM_PREFIX = "edgefleet-"
_NAME = re.compile(r"^edgefleet-[A-Za-z0-9_.-]{1,200}$")


def input_from_proto(tensor: inference_pb2.Tensor) -> tuple[np.ndarray, bool]:
    """The array of a request's input tensor, and whether it is a view of shared memory (then copy it
    before keeping it past the request)."""
    if not tensor.shm_name:
        return tensor_from_proto(tensor), False
    if tensor.data:
        raise ProtocolError("a tensor gives either data or shm_name, not both")
    return _shared(tensor), True


class _Mappings:
    """Mappings of recently used segments, so that an app sending frame after frame through one segment
    costs no page faults per request. A mapping is reused only while the name still opens the same file
    (device, inode and size): a segment removed and made again under the same name is mapped anew."""

    def __init__(self, keep: int = 16) -> None:
        self.keep = keep
        self._maps: OrderedDict[str, tuple[tuple[int, int, int], mmap.mmap]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, name: str, fd: int, stat: os.stat_result) -> mmap.mmap:
        identity = (stat.st_dev, stat.st_ino, stat.st_size)
        with self._lock:
            cached = self._maps.pop(name, None)
            if cached is not None and cached[0] == identity:
                self._maps[name] = cached
                return cached[1]
            mapped = mmap.mmap(fd, stat.st_size, mmap.MAP_SHARED, mmap.PROT_READ)  # outlives fd, and any view
            self._maps[name] = (identity, mapped)
            while len(self._maps) > self.keep:
                self._maps.popitem(last=False)  # unmapped once no array views it any more
            return mapped


_MAPPINGS = _Mappings()


def _shared(tensor: inference_pb2.Tensor) -> np.ndarray:
    name, dtype, shape, offset = tensor.shm_name, tensor.dtype, list(tensor.shape), tensor.shm_offset
    if not _NAME.match(name):
        raise ProtocolError(f"shared-memory segment {name[:80]!r}: the name must begin with {SHM_PREFIX!r}")
    if dtype not in DTYPES:
        raise ProtocolError(f"unsupported dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
    if any(d < 0 for d in shape) or offset < 0:
        raise ProtocolError(f"negative dimension or offset (shape {shape}, offset {offset})")
    elements = math.prod(shape)
    if elements > MAX_ELEMENTS:
        raise ProtocolError(f"shape {shape} has {elements} elements; at most {MAX_ELEMENTS} can be held")
    np_dtype = np.dtype(dtype).newbyteorder("<")
    nbytes = elements * np_dtype.itemsize
    try:
        fd = os.open(SHM_DIR / name, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise ProtocolError(f"no shared-memory segment {name!r}") from None
    except OSError as exc:
        raise ProtocolError(f"shared-memory segment {name!r}: {exc.strerror}") from None
    try:
        stat = os.fstat(fd)
        if offset + nbytes > stat.st_size:
            raise ProtocolError(
                f"shared-memory segment {name!r} holds {stat.st_size} bytes; the tensor needs {nbytes} "
                f"from offset {offset}"
            )
        if nbytes == 0:
            return np.zeros(shape, dtype=np.dtype(dtype))
        mapped = _MAPPINGS.get(name, fd, stat)
    finally:
        os.close(fd)
    view = np.frombuffer(mapped, dtype=np_dtype, count=elements, offset=offset).reshape(shape)
    return view.astype(np.dtype(dtype), copy=False)
