"""Candidates are timed side by side in interleaved rounds, each with a median and a confidence interval;
one is "faster" than another only when the intervals separate, and the report shows them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from edgefleet.agent.device_class import load_device_class
from edgefleet.compression import BuildOptions, CompressionReport, EvalOptions, compress
from edgefleet.compression.candidates.base import Candidate, Measurement
from edgefleet.compression.export import export_onnx
from edgefleet.compression.selection import select_candidate
from edgefleet.compression.timing import Latency, interleaved_latency, median_interval, separated

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def test_the_median_interval_is_the_order_statistics_of_its_coverage() -> None:
    samples = [float(v) for v in (7, 3, 10, 1, 5, 9, 2, 8, 4, 6)]
    low, high, coverage = median_interval(samples)
    # n = 10: P(X(2) <= median <= X(9)) = 1 - 2 * (C(10,0) + C(10,1)) / 2^10 = 0.9785; X(3)..X(8) is 0.891.
    assert (low, high) == (2.0, 9.0) and coverage == pytest.approx(1 - 2 * 11 / 1024)
    assert median_interval([1.0, 2.0, 3.0]) == (1.0, 3.0, 0.75)  # too few for 95%: the widest, said so


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def test_interleaved_rounds_separate_a_big_model_from_a_small_one(tmp_path: Path) -> None:
    torch.manual_seed(0)
    small = export_onnx(torch.nn.Linear(64, 8), torch.zeros(2, 64), tmp_path / "small.onnx")
    big = export_onnx(
        torch.nn.Sequential(*[torch.nn.Linear(512, 512) for _ in range(6)]), torch.zeros(2, 512), tmp_path / "big.onnx"
    )
    x_small, x_big = np.zeros((8, 64), np.float32), np.zeros((8, 512), np.float32)
    sessions = {"small": _session(small), "big": _session(big)}
    feeds = {"small": x_small, "big": x_big}
    runners = {n: (lambda s=s, x=feeds[n]: s.run(None, {"input": x})) for n, s in sessions.items()}

    timed = interleaved_latency(runners, rounds=10, runs_per_round=5, budget_s=0.5)

    assert all(t.rounds == 10 and t.low_ms <= t.median_ms <= t.high_ms for t in timed.values())
    assert timed["small"].coverage == pytest.approx(1 - 2 * 11 / 1024)
    assert separated(timed["small"], timed["big"]) and timed["big"].median_ms > 5 * timed["small"].median_ms


def _candidate(name: str, precision: str, b1: Latency, size: float) -> Candidate:
    candidate = Candidate(name, name, precision, "onnx", frozenset({"cpu"}), status="built")  # type: ignore[arg-type]
    candidate.measured = Measurement(
        "onnxruntime-cpu", 0.9, 0.0, b1.median_ms, b1.median_ms * 8, 32, size, size, 1.0, latency_b1=b1
    )
    return candidate


def test_faster_only_when_the_intervals_separate() -> None:
    fp32 = _candidate("fp32", "fp32", Latency(1.00, 0.99, 1.01, 0.98, 10, 50), 4.0)
    # 3% slower by the median, and measurably so: rpi4's INT8 preference does not make it a tie.
    slower = _candidate("int8", "int8", Latency(1.03, 1.02, 1.04, 0.98, 10, 50), 1.0)
    # 10% faster by the median, but the intervals overlap: no faster, so x86-gateway's fp32 preference holds.
    noisy = _candidate("int8-noisy", "int8", Latency(0.90, 0.70, 1.20, 0.98, 10, 50), 1.0)

    assert select_candidate([fp32, slower], load_device_class("rpi4")).chosen == "fp32"
    chosen = select_candidate([fp32, noisy], load_device_class("x86-gateway"))
    assert chosen.chosen == "fp32" and "2 not separated from it" in chosen.reason


@pytest.fixture(scope="module")
def timed_run(tmp_path_factory: pytest.TempPathFactory) -> CompressionReport:
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
    x = np.random.default_rng(0).normal(size=(64, 64)).astype(np.float32)
    return compress(
        mlp,
        {"x": x},
        metric="cosine",
        out_dir=tmp_path_factory.mktemp("timed"),
        name="mlp",
        version="1",
        device_classes=["x86-gateway"],
        techniques=["fp32", "int8-dynamic"],
        build=BuildOptions(dynamic_variants=["per-channel"]),
        evaluation=EvalOptions(memory="off", latency_runs=30, latency_budget_s=0.3, latency_rounds=6),
    )


def test_each_candidate_has_a_median_and_interval_from_interleaved_rounds(timed_run: CompressionReport) -> None:
    for name in ("fp32", "int8-dynamic-pc"):
        m = timed_run.candidate(name).measured
        assert m is not None and m.latency_b1 is not None and m.latency_bn is not None
        assert m.latency_b1.rounds == 6 and m.latency_b1.runs >= 6
        assert m.latency_b1.low_ms <= m.latency_ms_b1 == m.latency_b1.median_ms <= m.latency_b1.high_ms
    saved = json.loads((timed_run.out_dir / "report.json").read_text())
    b1 = saved["candidates"][0]["measured"]["latency_b1"]
    assert set(b1) == {"median_ms", "low_ms", "high_ms", "coverage", "rounds", "runs"}
    fp32 = timed_run.candidate("fp32").measured
    assert fp32 is not None and fp32.latency_b1 is not None
    row = f"{fp32.latency_ms_b1:.3f} [{fp32.latency_b1.low_ms:.3f}-{fp32.latency_b1.high_ms:.3f}]"
    assert row in (timed_run.out_dir / "report.md").read_text()
