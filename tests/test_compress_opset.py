"""Static INT8 of a model exported at opset 11 or 12: the opset is upgraded first (ONNX's version converter).

Per-channel ``DequantizeLinear`` (its ``axis``) needs opset 13; quantizing an opset-11 graph as it is
fails with "Unrecognized attribute: axis for operator DequantizeLinear".
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from edgefleet.compression import BuildOptions, EvalOptions, compress

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py

FAST = EvalOptions(memory="off", latency_runs=5, latency_budget_s=0.05)


def _cnn() -> torch.nn.Module:
    """A small VGG-style CNN with random weights."""
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1),
        torch.nn.BatchNorm2d(16),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(16, 32, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(32, 10),
    ).eval()


@pytest.mark.parametrize("opset", [11, 12])
def test_static_int8_of_an_old_opset_model_is_built_after_upgrading_it(tmp_path: Path, opset: int) -> None:
    x = np.random.default_rng(0).normal(size=(32, 3, 16, 16)).astype(np.float32)

    report = compress(
        _cnn(),
        {"x": x},
        metric="cosine",
        out_dir=tmp_path,
        name="cnn",
        version="1",
        device_classes=["x86-gateway"],
        techniques=["fp32", "int8-static"],
        build=BuildOptions(opset=opset),
        evaluation=FAST,
    )

    reference, static = report.candidate("fp32"), report.candidate("int8-static-pc")
    assert reference.path is not None and onnx.load(str(reference.path)).opset_import[0].version == opset
    assert static.usable, static.reason or static.eval_error
    assert static.params["opset"] == f"{opset} -> 13 (onnx.version_converter)"
    assert static.measured is not None and static.measured.metric > 0.95
