"""A request that fits the manifest but that the model itself refuses is the caller's error: INVALID_ARGUMENT
with the runtime's reason, counted as a client error (not a model failure) in telemetry, no traceback in the
log. A shape whose element count overflows 64 bits is refused the same way. Tested with an exported text
architecture (an embedding bag, random weights) that refuses a token id outside its vocabulary."""

from __future__ import annotations

import logging
from pathlib import Path

import grpc
import numpy as np
import pytest

from edgefleet.agent.serving.batcher import MicroBatcher
from edgefleet.agent.serving.client import InferenceClient
from edgefleet.agent.serving.model import LoadedModel, load_model
from edgefleet.agent.serving.server import InferenceApi, InferenceService
from edgefleet.agent.telemetry.stats import InferenceStats
from edgefleet.protocol.bundle import Manifest, extract_bundle
from edgefleet.protocol.errors import ProtocolError
from edgefleet.protocol.grpc_gen import inference_pb2
from edgefleet.protocol.messages import Telemetry
from edgefleet.protocol.tensors import array_from_bytes
from tests.conftest import Keys, build

VOCABULARY = 100


def _embedding_bag(tmp_path: Path) -> Path:
    torch = pytest.importorskip("torch", reason="torch (compression extra) not installed")

    class Bag(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Embedding(VOCABULARY, 8)
            self.head = torch.nn.Linear(8, 3)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.head(self.embed(ids).mean(dim=1))

    torch.manual_seed(5)
    path = tmp_path / "bag.onnx"
    torch.onnx.export(
        Bag().eval(), (torch.zeros(1, 6, dtype=torch.int64),), str(path), input_names=["ids"], output_names=["logits"],
        dynamic_axes={"ids": {0: "batch", 1: "tokens"}, "logits": {0: "batch"}}, opset_version=17, dynamo=False,
    )  # fmt: skip
    return path


def _load(tmp_path: Path, keys: Keys) -> LoadedModel:
    ids = np.random.default_rng(0).integers(0, VOCABULARY, size=(2, 6), dtype=np.int64)
    model = _embedding_bag(tmp_path)
    archive, digest = build(model, tmp_path / "b.bundle", keys, version="1", test_inputs=[{"ids": ids}])
    signed = extract_bundle(archive, tmp_path / "x")
    manifest = Manifest.model_validate_json(signed.manifest)
    return load_model(digest, manifest, tmp_path / "x" / manifest.model_file)


@pytest.fixture
def served(tmp_path: Path, keys: Keys):  # type: ignore[no-untyped-def]
    model = _load(tmp_path, keys)
    stats = InferenceStats()
    batcher = MicroBatcher(max_batch_size=8, max_delay_ms=2)
    service = InferenceService(lambda: model, stats, "x86-gateway", batcher=batcher)
    api = InferenceApi(service, socket_path=tmp_path / "a.sock", tcp_port=None, max_message_bytes=1 << 20, workers=2)
    api.set_serving(True)
    api.start()
    try:
        with InferenceClient(f"unix://{tmp_path / 'a.sock'}") as client:
            yield client, stats
    finally:
        api.stop()


def test_a_token_outside_the_vocabulary_is_invalid_argument_and_a_client_error(
    served: tuple[InferenceClient, InferenceStats], caplog: pytest.LogCaptureFixture
) -> None:
    client, stats = served
    caplog.set_level(logging.INFO)

    with pytest.raises(grpc.RpcError) as refused:
        client.predict({"ids": np.array([[1, 2, 3, VOCABULARY + 400, 4, 5]], dtype=np.int64)})
    answered = client.predict({"ids": np.array([[1, 2, 3, 4, 5, 6]], dtype=np.int64)}).outputs["logits"]

    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value.details()
    assert "the model refused the input" in refused.value.details()
    assert str(VOCABULARY + 400) in refused.value.details()  # the runtime's own reason travels
    assert answered.shape == (1, 3)
    window = stats.take("dev-1", "d" * 64)
    assert window.inference_count == 1 and window.error_count == 0  # the model did not fail
    assert window.errors_by_kind == {"invalid_argument": 1}
    assert not [r for r in caplog.records if r.exc_info], "a refused request logged a traceback"
    Telemetry.model_validate_json(window.to_bytes())  # and the window is a valid report on the wire


def test_a_shape_whose_element_count_overflows_64_bits_is_invalid_argument(
    served: tuple[InferenceClient, InferenceStats],
) -> None:
    client, stats = served
    huge = inference_pb2.Tensor(dtype="int64", shape=[2**62, 4], data=b"")  # 2**64 elements: int64 product wraps to 0
    with pytest.raises(grpc.RpcError) as refused:
        client.stub.Predict(inference_pb2.PredictRequest(inputs={"ids": huge}), timeout=10)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value.details()
    assert "elements" in refused.value.details()
    assert stats.take("dev-1", None).errors_by_kind == {"invalid_argument": 1}
    with pytest.raises(ProtocolError, match="elements"):
        array_from_bytes(b"", "float32", [2**40, 2**40])


def test_client_errors_do_not_count_against_the_model_on_the_wire() -> None:
    report = Telemetry(
        device_id="d", window_s=10, inference_count=5, error_count=1,
        errors_by_kind={"invalid_argument": 40, "runtime": 1},
    )  # fmt: skip
    assert report.error_count == 1
    with pytest.raises(ValueError, match="errors_by_kind"):
        Telemetry(device_id="d", window_s=10, inference_count=5, error_count=1, errors_by_kind={"runtime": 2})


def test_a_failed_self_test_says_the_shapes_it_compared(tmp_path: Path, keys: Keys) -> None:
    from edgefleet.agent.errors import ActivationError
    from edgefleet.protocol.tensors import TensorData

    model = _load(tmp_path, keys)
    vector = model.manifest.test_vectors[0]
    wrong = vector.model_copy(update={"outputs": {"logits": TensorData.from_array(np.zeros((2, 4), np.float32))}})
    model.manifest = model.manifest.model_copy(update={"test_vectors": [wrong]})
    with pytest.raises(ActivationError, match=r"shape \[2, 3\] \(float32\), the manifest's is \[2, 4\] \(float32\)"):
        model.self_test()
