"""All of a run's files stay in its output folder: the current directory is the same after success and failure.

ONNX Runtime's quantization pre-processing writes ``sym_shape_infer_temp.onnx`` (and ``<uuid>.data``
for a model with weights) to the current directory when its symbolic shape inference is incomplete,
as it is for ONNX's own backend-test model ``test_expand_shape_model1`` (an Expand to a shape fed
at run time). Each test runs from an empty directory of its own and checks it stays empty.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from edgefleet.compression import EvalOptions, compress
from edgefleet.compression.candidates.base import BuildContext, BuildOptions
from edgefleet.compression.candidates.quantize import prepared
from edgefleet.compression.data import EvalData
from edgefleet.compression.errors import ModelRunError
from edgefleet.compression.metrics import get_metric
from edgefleet.compression.source import load_reference
from tests.test_compress_outputs import VOCAB, IdsAndPooled, _sentences

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py

FAST = EvalOptions(memory="off", latency_runs=5, latency_budget_s=0.05)
EXPAND_MODEL = Path(onnx.__file__).parent / "backend/test/data/simple/test_expand_shape_model1/model.onnx"


@pytest.fixture
def empty_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty current directory for the test (the code under test must leave it so)."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


def _run(out: Path, arrays: dict[str, np.ndarray]) -> None:
    compress(
        IdsAndPooled(),
        arrays,
        metric="cosine",
        out_dir=out,
        name="encoder",
        version="1.0.0",
        device_classes=["x86-gateway"],
        techniques=["fp32", "int8-dynamic", "int8-static"],
        build=BuildOptions(dynamic_variants=["per-channel"]),
        evaluation=FAST,
        output_names=["ids", "pooled"],
    )


def test_incomplete_shape_inference_leaves_nothing_in_the_current_directory(empty_cwd: Path, tmp_path: Path) -> None:
    model = tmp_path / "expand.onnx"
    shutil.copyfile(EXPAND_MODEL, model)
    reference = load_reference(model, tmp_path / "run" / "work" / "reference.onnx", example={})
    rows = EvalData({"X": np.ones((1, 3, 1), np.float32), "shape": np.array([3, 1], np.int64)})
    ctx = BuildContext(tmp_path / "run", reference, rows, get_metric("cosine"), BuildOptions())

    ready = prepared(ctx)

    assert ready.is_file() and onnx.load(str(ready)).graph.node[0].op_type == "Expand"
    assert os.listdir(empty_cwd) == [], "ONNX Runtime's temporary files belong in the run's folder"
    assert os.getcwd() == str(empty_cwd)


def test_the_current_directory_is_unchanged_after_a_successful_run(empty_cwd: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    _run(out, _sentences())
    assert os.getcwd() == str(empty_cwd) and os.listdir(empty_cwd) == []
    assert not (out / "work" / "tmp").exists(), "the run's temporary folder is removed"
    assert json.loads((out / "report.json").read_text())["outcome"] == "complete"


def test_the_current_directory_is_unchanged_after_a_failed_run(empty_cwd: Path, tmp_path: Path) -> None:
    arrays = _sentences()
    arrays["x.input_ids"][2:] += VOCAB  # token ids past the embedding (the 2 export rows are fine): Gather fails
    out = tmp_path / "out"
    with pytest.raises(ModelRunError, match="the reference model fails on the validation data"):
        _run(out, arrays)
    assert os.getcwd() == str(empty_cwd) and os.listdir(empty_cwd) == []
    assert not (out / "work" / "tmp").exists()
