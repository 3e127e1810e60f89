"""A small client for the agent's local API, for apps, tests and the demo."""

from __future__ import annotations

import uuid

import grpc
import numpy as np

from edgefleet.protocol.grpc_gen import inference_pb2, inference_pb2_grpc
from edgefleet.protocol.model_card import ModelCard
from edgefleet.protocol.tensors import tensor_from_proto, tensor_to_proto

__all__ = ["InferenceClient", "Prediction"]


class Prediction:
    def __init__(self, response: inference_pb2.PredictResponse) -> None:
        self.outputs = {name: tensor_from_proto(t) for name, t in response.outputs.items()}
        self.model_name = response.model_name
        self.model_version = response.model_version
        self.bundle_digest = response.bundle_digest
        self.latency_ms = response.latency_ms


class InferenceClient:
    """``target`` is ``unix:///path/agent.sock`` or ``127.0.0.1:PORT``."""

    def __init__(self, target: str, *, max_message_bytes: int = 16 * 1024 * 1024) -> None:
        self.channel = grpc.insecure_channel(
            target,
            options=[
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.max_send_message_length", max_message_bytes),
            ],
        )
        self.stub = inference_pb2_grpc.InferenceStub(self.channel)

    def predict(self, inputs: dict[str, np.ndarray], *, timeout: float = 10.0) -> Prediction:
        request = inference_pb2.PredictRequest(
            inputs={name: tensor_to_proto(value) for name, value in inputs.items()},
            request_id=uuid.uuid4().hex,
        )
        return Prediction(self.stub.Predict(request, timeout=timeout))

    def model_info(self, *, timeout: float = 5.0) -> inference_pb2.ModelInfoResponse:
        return self.stub.ModelInfo(inference_pb2.ModelInfoRequest(), timeout=timeout)

    def model_card(self, *, timeout: float = 5.0) -> tuple[str, ModelCard]:
        """The active bundle's digest and model card (labels, preprocessing, output roles, assets)."""
        info = self.model_info(timeout=timeout)
        if not info.loaded:
            raise LookupError("no model is active on this agent")
        return info.bundle_digest, ModelCard.model_validate_json(info.model_card or "{}")

    def asset(self, name: str, *, bundle_digest: str = "", timeout: float = 30.0) -> bytes:
        """The bytes of one of the active bundle's assets (of ``bundle_digest``, if given: it must still be
        active), checked against the size the agent announced; the card's sha256 is there to check it again."""
        chunks = list(self.stub.GetAsset(inference_pb2.AssetRequest(name=name, bundle_digest=bundle_digest),
                                         timeout=timeout))  # fmt: skip
        data = b"".join(c.data for c in chunks)
        if chunks and len(data) != chunks[0].total_size:
            raise OSError(f"asset {name!r}: got {len(data)} of {chunks[0].total_size} bytes")
        return data

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> InferenceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
