"""Rank-0 (scalar) tensors round-trip: in test vectors, requests, responses and the client, with
models nobody here wrote (ONNX's own backend test data) and an exported architecture with a scalar
input like a voice-activity detector's sample rate."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from edgefleet.agent.learning.samples import RecentRequests, SampleStore
from edgefleet.agent.serving.batcher import MicroBatcher
from edgefleet.agent.serving.client import InferenceClient
from edgefleet.agent.serving.model import LoadedModel, load_model
from edgefleet.agent.serving.server import InferenceApi, InferenceService
from edgefleet.agent.serving.update_lock import UpdateLock
from edgefleet.agent.telemetry.stats import InferenceStats
from edgefleet.protocol.bundle import Manifest, extract_bundle
from edgefleet.protocol.errors import ProtocolError
from edgefleet.protocol.tensors import TensorData, TensorSpec, check_against_spec, tensor_from_proto, tensor_to_proto
from tests.conftest import Keys, build

ONNX_DATA = Path(os.path.dirname(onnx.__file__)) / "backend" / "test" / "data"


def test_a_scalar_keeps_rank_zero_on_the_wire() -> None:
    for value in (np.float32(2.5), np.array(7, dtype=np.int64), np.asarray(True)):
        array = np.asarray(value)
        assert TensorData.from_array(array).to_array().shape == ()
        assert TensorData.from_array(array).to_array() == array
        back = tensor_from_proto(tensor_to_proto(array))
        assert back.shape == () and back.dtype == array.dtype and back == array
    column = np.arange(6, dtype=np.float32).reshape(2, 3)[:, 1]  # not contiguous: still copied in C order
    assert tensor_from_proto(tensor_to_proto(column)).tolist() == [1.0, 4.0]


def _load(tmp_path: Path, model: Path, keys: Keys, inputs: dict[str, np.ndarray]) -> LoadedModel:
    archive, digest = build(model, tmp_path / "b.bundle", keys, version="1", test_inputs=[inputs])
    signed = extract_bundle(archive, tmp_path / "x")
    manifest = Manifest.model_validate_json(signed.manifest)
    return load_model(digest, manifest, tmp_path / "x" / manifest.model_file)


def _served(tmp_path: Path, model: LoadedModel) -> InferenceApi:
    service = InferenceService(
        lambda: model, InferenceStats(), "x86-gateway", batcher=MicroBatcher(max_batch_size=8, max_delay_ms=2),
        recent=RecentRequests(max_entries=10, max_age_s=60), samples=SampleStore(tmp_path / "samples.db"),
        update_lock=UpdateLock(),
    )  # fmt: skip
    api = InferenceApi(service, socket_path=tmp_path / "a.sock", tcp_port=None, max_message_bytes=1 << 20, workers=2)
    api.set_serving(True)
    api.start()
    return api


def test_a_third_party_model_with_a_scalar_output_is_served_with_shape_empty(tmp_path: Path, keys: Keys) -> None:
    """ONNX's backend test `simple/test_sequence_model6`: SplitToSequence then SequenceLength, a rank-0 int64."""
    case = ONNX_DATA / "simple" / "test_sequence_model6"
    inputs = {"X": numpy_helper.to_array(onnx.load_tensor(str(case / "test_data_set_0" / "input_0.pb")))}
    expected = numpy_helper.to_array(onnx.load_tensor(str(case / "test_data_set_0" / "output_0.pb")))
    assert expected.shape == ()
    model = _load(tmp_path, case / "model.onnx", keys, inputs)  # activation runs the test vector
    assert [o.shape for o in model.manifest.outputs] == [[]]
    api = _served(tmp_path, model)
    try:
        with InferenceClient(f"unix://{tmp_path / 'a.sock'}") as client:
            info = client.model_info()
            assert list(info.outputs[0].shape) == []
            out = client.predict(inputs).outputs["len"]
        assert out.shape == () and out.dtype == np.int64 and out == expected
    finally:
        api.stop()


def test_an_exported_model_with_a_scalar_input_activates_and_answers(tmp_path: Path, keys: Keys) -> None:
    """A VAD-like architecture (random weights): audio chunk [batch, samples] and a scalar sample rate."""
    torch = pytest.importorskip("torch", reason="torch (compression extra) not installed")

    class Vad(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = torch.nn.Linear(64, 1)

        def forward(self, audio: torch.Tensor, sr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            scale = sr.to(torch.float32) / 16000.0
            prob = torch.sigmoid(self.proj(audio * scale))
            return prob, prob.mean()  # the second output is a scalar too

    torch.manual_seed(3)
    path = tmp_path / "vad.onnx"
    audio, sr = torch.randn(2, 64), torch.tensor(16000, dtype=torch.int64)
    torch.onnx.export(Vad().eval(), (audio, sr), str(path), input_names=["audio", "sr"],
                      output_names=["prob", "mean"], dynamic_axes={"audio": {0: "batch"}, "prob": {0: "batch"}},
                      dynamo=False)  # fmt: skip
    feeds = {"audio": audio.numpy(), "sr": np.array(8000, dtype=np.int64)}
    raw = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)
    model = _load(tmp_path, path, keys, feeds)  # before: "input 'sr': rank 1, model expects rank 0"
    assert model.manifest.inputs[1].shape == [] and model.manifest.outputs[1].shape == []
    api = _served(tmp_path, model)
    try:
        with InferenceClient(f"unix://{tmp_path / 'a.sock'}") as client:
            out = client.predict(feeds).outputs
        assert out["mean"].shape == () and np.array_equal(out["mean"], raw[1])
        assert np.array_equal(out["prob"], raw[0])
    finally:
        api.stop()


def test_a_scalar_where_the_model_wants_a_vector_is_refused_with_the_ranks() -> None:
    spec = TensorSpec(name="audio", dtype="float32", shape=[None, 64])
    with pytest.raises(ProtocolError, match=r"rank 0 \(shape \[\]\), model expects rank 2"):
        check_against_spec(np.asarray(np.float32(1.0)), spec)
