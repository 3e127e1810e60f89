"""Reading .npy bytes without numpy's header parser, which is not safe in threads on CPython 3.11."""

from __future__ import annotations

import io
import re
import threading

import numpy as np

__all__ = ["read_npy"]

# np.load reads each array's header with ast.literal_eval, and CPython 3.11's AST construction keeps
# its recursion depth in interpreter-wide state: parsing while another thread compiles anything can
# fail with "SystemError: AST constructor recursion depth mismatch" (about 1 in 200 client rounds
# when in-process campaign clients decode their samples or weights while others do). The headers
# numpy writes for plain arrays are read here with a regular expression instead; anything else (a
# header this does not recognise) goes to numpy, one thread at a time.
_HEADER = re.compile(r"\{'descr': '([^']+)', 'fortran_order': (True|False), 'shape': \(([0-9, ]*)\), \}\s*$")
_NPY_MAGIC = b"\x93NUMPY"
_NUMPY_LOCK = threading.Lock()


def read_npy(raw: bytes) -> np.ndarray:
    """The array of one .npy file's bytes (a copy, writable)."""
    if raw[:6] != _NPY_MAGIC:
        raise ValueError("not a .npy array")
    size_bytes = 2 if raw[6] == 1 else 4
    header_len = int.from_bytes(raw[8 : 8 + size_bytes], "little")
    start = 8 + size_bytes + header_len
    match = _HEADER.match(raw[8 + size_bytes : start].decode("latin1"))
    if match is None or (dtype := np.dtype(match.group(1))).hasobject:
        with _NUMPY_LOCK:
            return np.lib.format.read_array(io.BytesIO(raw), allow_pickle=False)
    shape = tuple(int(d) for d in match.group(3).split(",") if d.strip())
    count = int(np.prod(shape, dtype=np.int64))
    flat = np.frombuffer(raw, dtype=dtype, count=count, offset=start)
    return flat.reshape(shape, order="F" if match.group(2) == "True" else "C").copy(order="K")
