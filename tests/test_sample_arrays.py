"""The agent's packed sample arrays: read back exactly, without numpy's AST-based header parser."""

from __future__ import annotations

import ast
import io

import numpy as np
import pytest

from edgefleet.agent.learning.samples import pack_arrays, unpack_arrays

ARRAYS = {
    "pixels": np.arange(64, dtype=np.float32).reshape(1, 64) / 7,
    "label": np.array(3),
    "mask": np.array([True, False, True]),
    "image": np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4),
    "fortran": np.asfortranarray(np.arange(12, dtype=np.float64).reshape(3, 4)),
    "half": np.array([0.5, -1.25], dtype=np.float16),
    "big_endian": np.array([1, -2, 3], dtype=">i4"),
    "text": np.array(["ab", "cde"]),
    "empty": np.zeros((0, 5), dtype=np.float32),
}


def test_arrays_read_back_as_numpy_reads_them(monkeypatch: pytest.MonkeyPatch) -> None:
    packed = pack_arrays(ARRAYS)
    with np.load(io.BytesIO(packed)) as reference:
        expected = {name: reference[name] for name in reference.files}

    # No header of a plain array may go through ast (racy across threads on CPython 3.11).
    def no_ast(_text: str) -> None:
        raise AssertionError("ast.literal_eval was called")

    monkeypatch.setattr(ast, "literal_eval", no_ast)
    got = unpack_arrays(packed)
    assert got.keys() == expected.keys()
    for name, want in expected.items():
        assert got[name].dtype == want.dtype and got[name].shape == want.shape, name
        np.testing.assert_array_equal(got[name], want)
        assert got[name].flags.writeable
    assert got["fortran"].flags.f_contiguous


def test_an_unusual_header_still_reads_through_numpy() -> None:
    structured = np.array([(1, 2.5)], dtype=[("a", "<i4"), ("b", "<f8")])
    got = unpack_arrays(pack_arrays({"s": structured}))["s"]
    assert got.dtype == structured.dtype and got.tolist() == structured.tolist()


def test_a_damaged_blob_raises() -> None:
    with pytest.raises(Exception):  # noqa: B017 - zipfile's or numpy's error, whichever layer notices
        unpack_arrays(pack_arrays(ARRAYS)[:-40])


def test_flower_arrays_decode_without_ast_as_flower_decodes_them(monkeypatch: pytest.MonkeyPatch) -> None:
    # Campaign clients decode the global weights in threads at once; Array.numpy() would parse with ast.
    from flwr.app import Array

    from edgefleet.federated.weights import array_to_numpy

    arrays = {name: Array(value) for name, value in ARRAYS.items() if value.dtype.kind != "U"}
    expected = {name: array.numpy() for name, array in arrays.items()}
    monkeypatch.setattr(ast, "literal_eval", lambda _text: pytest.fail("ast.literal_eval was called"))
    for name, array in arrays.items():
        got = array_to_numpy(array)
        assert got.dtype == expected[name].dtype and got.shape == expected[name].shape, name
        np.testing.assert_array_equal(got, expected[name])
