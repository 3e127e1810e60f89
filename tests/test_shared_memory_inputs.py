"""Inputs in shared memory: a 3x640x640 image reaches a real agent's model by segment name, not bytes."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest

from edgefleet.agent.serving.client import InferenceClient, SharedInput
from edgefleet.local.fleet import LocalFleet
from edgefleet.protocol.grpc_gen import inference_pb2
from tests.conftest import Keys, build


def _detector_like(path: Path) -> Path:
    """A small conv net on 640x640 images (a detector's input size), random weights, exported from PyTorch."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(1)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, stride=4),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(4),
        torch.nn.Flatten(),
        torch.nn.Linear(128, 6),
    ).eval()
    torch.onnx.export(net, (torch.zeros(1, 3, 640, 640),), str(path), input_names=["images"], output_names=["scores"],
                      dynamo=False)  # fmt: skip
    return path


def test_a_large_image_in_shared_memory_gives_what_the_bytes_and_raw_runtime_give(
    tmp_path: Path, fleet: LocalFleet, keys: Keys
) -> None:
    # Prepare: the model active on a real agent; an image written into a segment the app owns
    model = _detector_like(tmp_path / "det.onnx")
    image = np.random.default_rng(0).random((1, 3, 640, 640), dtype=np.float32)
    archive, digest = build(model, tmp_path / "det.bundle", keys, version="1.0.0", test_inputs=[{"images": image}])
    fleet.start_coordinator()
    agent = fleet.add_agent("gw-1")
    fleet.start_agent("gw-1")
    fleet.wait_registered(["gw-1"], timeout=30)
    fleet.upload(archive)
    fleet.deploy(digest)
    fleet.wait_active(digest, ["gw-1"])

    with InferenceClient(agent.target) as client, SharedInput(image.nbytes) as segment:
        # Execute: the same image by segment name and as bytes; then bad references
        segment.write(image)
        by_name = client.predict({}, shared={"images": segment}).outputs["scores"]
        as_bytes = client.predict({"images": image}).outputs["scores"]
        refused = {}
        for label, tensor in {
            "foreign": inference_pb2.Tensor(dtype="float32", shape=[1, 3, 640, 640], shm_name="other-app"),
            "missing": inference_pb2.Tensor(dtype="float32", shape=[1, 3, 640, 640], shm_name="edgefleet-none"),
            "too small": inference_pb2.Tensor(dtype="float32", shape=[1, 3, 640, 641], shm_name=segment.name),
        }.items():
            with pytest.raises(grpc.RpcError) as caught:
                client.stub.Predict(inference_pb2.PredictRequest(inputs={"images": tensor}), timeout=10)
            refused[label] = (caught.value.code(), str(caught.value.details()))

    # Assert: bit-identical to the bytes path and to raw ONNX Runtime; each bad reference INVALID_ARGUMENT
    expected = ort.InferenceSession(str(model)).run(None, {"images": image})[0]
    np.testing.assert_array_equal(by_name, as_bytes)
    np.testing.assert_array_equal(by_name, expected)
    assert all(code == grpc.StatusCode.INVALID_ARGUMENT for code, _ in refused.values()), refused
    assert "must begin with 'edgefleet-'" in refused["foreign"][1]
    assert "no shared-memory segment" in refused["missing"][1]
    assert "the tensor needs" in refused["too small"][1]
    assert not Path(f"/dev/shm/{segment.name}").exists()  # closed: the segment is gone
