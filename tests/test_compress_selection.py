"""Metrics by hand and the choice of candidate per device class, on real measurements and on constructed ones."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgefleet.agent.device_class import DeviceClass, load_device_class
from edgefleet.compression import BuildOptions, CompressionReport, EvalOptions, compress
from edgefleet.compression.candidates.base import Candidate, Measurement
from edgefleet.compression.metrics import get_metric
from edgefleet.compression.selection import select_candidate
from edgefleet.local.digits import DigitsData, load_digits_data, train_digits_mlp

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py

FAST = EvalOptions(memory="off", latency_runs=20, latency_budget_s=0.2)


@pytest.fixture(scope="module")
def data() -> DigitsData:
    return load_digits_data()


@pytest.fixture(scope="module")
def mlp(data: DigitsData) -> torch.nn.Module:
    return train_digits_mlp(data, hidden=32, epochs=10)[0]


@pytest.fixture(scope="module")
def cosine_run(tmp_path_factory: pytest.TempPathFactory, mlp: torch.nn.Module, data: DigitsData) -> CompressionReport:
    """FP32 and dynamic INT8 judged by cosine to the reference: INT8's drop is small but never zero."""
    return compress(
        mlp,
        {"x": data.x_test},
        metric="cosine",
        out_dir=tmp_path_factory.mktemp("cosine-run"),
        name="digits",
        version="2.0.0",
        device_classes=["rpi4"],
        techniques=["fp32", "int8-dynamic"],
        build=BuildOptions(dynamic_variants=["per-channel"]),
        evaluation=FAST,
    )


def _with(device_class: str, **selection: object) -> DeviceClass:
    base = load_device_class(device_class)
    return base.model_copy(update={"selection": base.selection.model_copy(update=selection)})


def test_metrics_by_hand() -> None:
    outputs = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]], np.float32)
    labels = np.array([1, 0, 0, 0])
    assert get_metric("accuracy").score(outputs, labels, outputs) == 0.75
    targets = np.zeros((4, 2), np.float32)
    assert get_metric("mse").score(outputs, targets, outputs) == pytest.approx(np.mean(outputs.astype(np.float64) ** 2))
    rotated = outputs[:, ::-1].copy()
    expected = np.mean(
        [np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b) for a, b in zip(outputs, rotated, strict=True)]
    )
    assert get_metric("cosine").score(outputs, None, rotated) == pytest.approx(expected)
    assert get_metric("mse").drop(0.10, 0.15) == pytest.approx(0.05)  # lower is better
    assert get_metric("accuracy").drop(0.97, 0.95) == pytest.approx(0.02)


# -- selection ---------------------------------------------------------------------------
def test_a_tight_metric_drop_excludes_int8(cosine_run: CompressionReport) -> None:
    int8 = cosine_run.candidate("int8-dynamic-pc").measured
    assert int8 is not None and 0 < int8.drop < 0.01
    chosen = select_candidate(cosine_run.candidates, _with("rpi4", max_metric_drop=int8.drop / 2))
    assert chosen.chosen == "fp32"
    assert "drop" in chosen.rejected["int8-dynamic-pc"]


def test_a_size_limit_excludes_fp32(cosine_run: CompressionReport) -> None:
    fp32, int8 = cosine_run.candidate("fp32").measured, cosine_run.candidate("int8-dynamic-pc").measured
    assert fp32 is not None and int8 is not None
    limit = (fp32.size_mb + int8.size_mb) / 2
    chosen = select_candidate(cosine_run.candidates, _with("rpi4", max_size_mb=limit, max_metric_drop=0.01))
    assert chosen.chosen == "int8-dynamic-pc"
    assert chosen.rejected["fp32"].startswith("size")


def test_no_candidate_meeting_the_constraints_names_the_best(cosine_run: CompressionReport) -> None:
    int8 = cosine_run.candidate("int8-dynamic-pc").measured
    fp32 = cosine_run.candidate("fp32").measured
    assert int8 is not None and fp32 is not None
    # INT8 misses the drop limit by 10%, FP32 the size limit by far more: INT8 came closest.
    tight = _with("rpi4", max_metric_drop=int8.drop / 1.1, max_size_mb=fp32.size_mb / 1.5)
    result = select_candidate(cosine_run.candidates, tight)
    assert result.chosen is None
    assert result.reason == (
        f"no candidate meets max_metric_drop {int8.drop / 1.1:g} for rpi4; "
        f"best was int8-dynamic-pc with drop {int8.drop:.4g}"
    )
    assert result.rejected["fp32"].startswith("size")
    tflite_only = select_candidate(cosine_run.candidates, _with("rpi4", formats=["tflite"]))
    assert tflite_only.chosen is None and "formats ['tflite']" in tflite_only.reason


def _synthetic(name: str, precision: str, latency: float, size: float, targets: set[str]) -> Candidate:
    candidate = Candidate(name, name, precision, "onnx", frozenset(targets), status="built")  # type: ignore[arg-type]
    candidate.measured = Measurement("onnxruntime-cpu", 0.9, 0.0, latency, latency * 8, 32, size, size, 1.0)
    return candidate


def test_selection_prefers_speed_then_precision_then_size_and_respects_hardware() -> None:
    candidates = [
        _synthetic("fp32", "fp32", 1.00, 4.0, {"cpu", "gpu"}),
        _synthetic("int8", "int8", 1.02, 1.0, {"cpu"}),
        _synthetic("fp16", "fp16", 0.50, 2.0, {"gpu"}),
        _synthetic("slow", "fp32", 3.00, 0.5, {"cpu", "gpu"}),
    ]
    # rpi4 prefers int8: within 5% of the fastest, the preference decides; fp16 is for GPUs only.
    assert select_candidate(candidates, load_device_class("rpi4")).chosen == "int8"
    # x86-gateway prefers fp32, which is also the fastest CPU candidate.
    assert select_candidate(candidates, load_device_class("x86-gateway")).chosen == "fp32"
    # A Jetson prefers fp16 and never gets a CPU-only INT8 model.
    jetson = select_candidate(candidates, load_device_class("jetson-orin-nano"))
    assert jetson.chosen == "fp16" and jetson.hardware == "gpu"
    assert "made for cpu" in jetson.rejected["int8"]
    # A latency bound on a CPU class is honoured.
    bounded = select_candidate(candidates, _with("x86-gateway", max_latency_ms=0.9))
    assert bounded.chosen is None and "max_latency_ms 0.9" in bounded.reason
