"""Batching is declared by the bundle, verified when it is built, never guessed from shapes at serving time.

The model that broke the guess: a time-major LSTM (ONNX's and PyTorch's default layout, [time, batch,
features]) exported with random weights. Its first dimension is dynamic, but it is time: two callers'
frames concatenated along it run through one recurrent state.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort

from edgefleet.agent.serving.batcher import MicroBatcher
from edgefleet.agent.serving.model import LoadedModel, load_model
from edgefleet.protocol.bundle import Manifest, extract_bundle
from tests.conftest import DigitsModels, Keys, build


def _time_major_lstm(path: Path) -> Path:
    import torch

    torch.manual_seed(0)

    class Recurrent(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm = torch.nn.LSTM(input_size=6, hidden_size=5)  # batch_first=False: [time, batch, features]

        def forward(self, frames: torch.Tensor) -> torch.Tensor:
            return self.lstm(frames)[0]

    torch.onnx.export(Recurrent().eval(), (torch.randn(4, 1, 6),), str(path), input_names=["frames"],
                      output_names=["states"], dynamic_axes={"frames": {0: "time", 1: "batch"},
                                                             "states": {0: "time", 1: "batch"}},
                      dynamo=False)  # fmt: skip
    return path


def _load(tmp_path: Path, model: Path, keys: Keys) -> LoadedModel:
    archive, digest = build(model, tmp_path / "b.bundle", keys, version="1")
    signed = extract_bundle(archive, tmp_path / "x")
    return load_model(digest, Manifest.model_validate_json(signed.manifest), tmp_path / "x" / "model.onnx")


def _concurrently(batcher: MicroBatcher, model: LoadedModel, requests: list[dict[str, np.ndarray]]) -> list[dict]:
    together = threading.Barrier(len(requests))  # all arrive at once, however busy the machine

    def call(inputs: dict[str, np.ndarray]) -> dict:
        together.wait(timeout=30)
        return batcher.predict(model, inputs)

    with ThreadPoolExecutor(max_workers=len(requests)) as pool:
        return list(pool.map(call, requests))


def test_a_time_major_recurrent_model_is_built_without_batching_and_concurrent_callers_get_their_own_answers(
    tmp_path: Path, keys: Keys
) -> None:
    onnx_path = _time_major_lstm(tmp_path / "lstm.onnx")
    model = _load(tmp_path, onnx_path, keys)
    assert model.manifest.batching is not None and model.manifest.batching.max_batch_size == 0
    assert "differ" in model.manifest.batching.reason
    session = ort.InferenceSession(str(onnx_path))
    rng = np.random.default_rng(1)
    requests = [{"frames": rng.standard_normal((3, 1, 6)).astype(np.float32)} for _ in range(8)]
    batcher = MicroBatcher(max_batch_size=32, max_delay_ms=20)
    try:
        for _ in range(5):
            answers = _concurrently(batcher, model, requests)
            for inputs, answer in zip(requests, answers, strict=True):
                np.testing.assert_allclose(answer["states"], session.run(None, inputs)[0], rtol=1e-5, atol=1e-6)
    finally:
        batcher.close()
    assert batcher.stats.max_rows == 0  # never a shared batch


def test_a_model_that_batches_is_verified_at_build_time_and_the_device_class_only_turns_it_down(
    tmp_path: Path, keys: Keys, digits: DigitsModels
) -> None:
    model = _load(tmp_path, digits.v1, keys)
    batching = model.manifest.batching
    assert batching is not None and batching.max_batch_size >= 2 and "verified" in batching.reason
    requests = [{"pixels": digits.x_test[i : i + 1]} for i in range(12)]
    expected = ort.InferenceSession(str(digits.v1)).run(None, {"pixels": digits.x_test[:12]})[0]
    for class_limit, most in ((32, batching.max_batch_size), (3, 3)):
        batcher = MicroBatcher(max_batch_size=class_limit, max_delay_ms=20)
        try:
            answers = _concurrently(batcher, model, requests)
        finally:
            batcher.close()
        np.testing.assert_allclose(np.concatenate([a["logits"] for a in answers]), expected, rtol=1e-5, atol=1e-5)
        assert batcher.stats.max_rows <= min(most, class_limit)


def test_a_bundle_that_declares_no_batching_is_served_one_request_at_a_time(
    tmp_path: Path, keys: Keys, digits: DigitsModels
) -> None:
    model = _load(tmp_path, digits.v1, keys)
    model.manifest = model.manifest.model_copy(update={"batching": None})  # a bundle built before batching was declared
    batcher = MicroBatcher(max_batch_size=32, max_delay_ms=20)
    try:
        _concurrently(batcher, model, [{"pixels": digits.x_test[i : i + 1]} for i in range(8)])
    finally:
        batcher.close()
    assert batcher.stats.max_rows == 0  # never a shared batch


def test_bundle_inspect_says_whether_and_why_a_model_batches(tmp_path: Path, keys: Keys) -> None:
    from typer.testing import CliRunner

    from edgefleet.cli.main import app

    archive, _ = build(_time_major_lstm(tmp_path / "lstm.onnx"), tmp_path / "b.bundle", keys, version="1")
    result = CliRunner().invoke(app, ["bundle", "inspect", str(archive), "--format", "json"])
    assert result.exit_code == 0, result.output
    assert '"max_batch_size": 0' in result.output and "differ" in result.output
