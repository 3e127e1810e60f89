"""A small client for the agent's local API, for apps, tests and the demo."""

from __future__ import annotations

import uuid

import grpc
import numpy as np

from edgefleet.protocol.grpc_gen import inference_pb2, inference_pb2_grpc
from edgefleet.protocol.model_card import ModelCard
from edgefleet.protocol.tensors import tensor_from_proto, tensor_to_proto

__all__ = ["InferenceClient", "Prediction", "SharedInput"]


class Prediction:
    def __init__(self, response: inference_pb2.PredictResponse) -> None:
        self.outputs = {name: tensor_from_proto(t) for name, t in response.outputs.items()}
        self.model_name = response.model_name
        self.model_version = response.model_version
        self.bundle_digest = response.bundle_digest
        self.latency_ms = response.latency_ms


class SharedInput:
    """A POSIX shared-memory segment for one input, reused request after request: ``write`` an array into
    it, pass ``tensor()`` in ``predict(..., shared=...)``; ``close`` removes the segment. The agent reads it
    in place (agent/serving/shared_memory.py), so a large image does not travel through the socket."""

    def __init__(self, nbytes: int, *, mode: int = 0o600) -> None:
        """``mode``: the segment's permissions; an agent running as another user (the packaged service user)
        needs to read it: 0o640 with a group both share, say."""
        import os
        from multiprocessing import shared_memory

        self._shm = shared_memory.SharedMemory(name=f"edgefleet-{uuid.uuid4().hex}", create=True, size=max(1, nbytes))
        self.name = self._shm.name
        os.chmod(f"/dev/shm/{self.name}", mode)
        self._dtype, self._shape = "float32", [0]

    def write(self, array: np.ndarray) -> None:
        array = np.asarray(array, order="C")
        if array.nbytes > self._shm.size:
            raise ValueError(f"{array.nbytes} bytes do not fit the segment's {self._shm.size}")
        buf = self._shm.buf
        assert buf is not None  # open until close()
        np.ndarray(array.shape, dtype=array.dtype.newbyteorder("<"), buffer=buf)[...] = array  # one copy, in place
        self._dtype, self._shape = array.dtype.name, list(array.shape)

    def tensor(self) -> inference_pb2.Tensor:
        return inference_pb2.Tensor(dtype=self._dtype, shape=self._shape, shm_name=self.name, shm_offset=0)

    def close(self) -> None:
        self._shm.close()
        self._shm.unlink()

    def __enter__(self) -> SharedInput:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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

    def predict(
        self, inputs: dict[str, np.ndarray], *, shared: dict[str, SharedInput] | None = None, timeout: float = 10.0
    ) -> Prediction:
        """``shared``: inputs already written to shared memory (SharedInput.write), sent by name."""
        tensors = {name: tensor_to_proto(value) for name, value in inputs.items()}
        tensors.update((name, segment.tensor()) for name, segment in (shared or {}).items())
        request = inference_pb2.PredictRequest(inputs=tensors, request_id=uuid.uuid4().hex)
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
