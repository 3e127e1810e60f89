"""The local API beyond Predict: micro-batching, batch and stream calls, feedback, the update lock."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest

from edgefleet.agent.bundles.store import ModelStore
from edgefleet.agent.learning.samples import RecentRequests, SampleStore
from edgefleet.agent.serving.batcher import MicroBatcher
from edgefleet.agent.serving.model import LoadedModel, load_model
from edgefleet.agent.serving.server import InferenceApi, InferenceService
from edgefleet.agent.serving.update_lock import UpdateLock
from edgefleet.agent.telemetry.stats import InferenceStats
from edgefleet.protocol.bundle import Manifest, extract_bundle
from edgefleet.protocol.grpc_gen import inference_pb2, inference_pb2_grpc
from edgefleet.protocol.tensors import tensor_to_proto
from tests.conftest import DigitsModels, Keys, build


def _load(tmp_path: Path, model: Path, keys: Keys) -> LoadedModel:
    archive, digest = build(model, tmp_path / "b.bundle", keys, version="1")
    signed = extract_bundle(archive, tmp_path / "x")
    return load_model(digest, Manifest.model_validate_json(signed.manifest), tmp_path / "x" / "model.onnx")


@pytest.fixture
def model(tmp_path: Path, keys: Keys, digits: DigitsModels) -> LoadedModel:
    return _load(tmp_path, digits.v1, keys)


def test_concurrent_single_requests_are_batched_and_answered_correctly(
    model: LoadedModel, digits: DigitsModels
) -> None:
    batcher = MicroBatcher(max_batch_size=16, max_delay_ms=5)
    callers, rounds = 16, 12
    expected = ort.InferenceSession(str(digits.v1)).run(["logits"], {"pixels": digits.x_test[: callers * rounds]})[0]
    together = threading.Barrier(callers)  # each round's requests arrive at once, however busy the machine

    def caller(index: int) -> list[tuple[int, np.ndarray]]:
        answers = []
        for r in range(rounds):
            row = r * callers + index
            together.wait(timeout=30)
            answers.append((row, batcher.predict(model, {"pixels": digits.x_test[row : row + 1]})["logits"]))
        return answers

    try:
        with ThreadPoolExecutor(max_workers=callers) as pool:
            answered = [a for answers in pool.map(caller, range(callers)) for a in answers]
    finally:
        batcher.close()
    results = np.concatenate([logits for _, logits in sorted(answered, key=lambda a: a[0])])
    np.testing.assert_allclose(results, expected, rtol=1e-5, atol=1e-5)
    assert batcher.stats.requests == callers * rounds
    # How many share a batch depends on how busy the machine is; that some do, over 12 rounds of 16, does not.
    assert batcher.stats.max_rows > 1 and batcher.stats.batches < callers * rounds, batcher.stats


def test_a_bad_request_in_a_batch_fails_alone(model: LoadedModel, digits: DigitsModels) -> None:
    batcher = MicroBatcher(max_batch_size=8, max_delay_ms=20)
    barrier = threading.Barrier(4)

    def call(inputs: dict[str, np.ndarray]) -> object:
        barrier.wait()
        try:
            return batcher.predict(model, inputs)["logits"].shape
        except Exception as exc:
            return type(exc).__name__

    good = {"pixels": digits.x_test[:1]}
    bad = {"pixels": digits.x_test[:1].astype(np.float64)}
    try:
        with ThreadPoolExecutor(max_workers=4) as pool:
            outcomes = list(pool.map(call, [good, bad, good, good]))
    finally:
        batcher.close()
    assert outcomes == [(1, 10), "InputError", (1, 10), (1, 10)]


def test_a_lone_caller_waits_for_nobody(model: LoadedModel, digits: DigitsModels) -> None:
    batcher = MicroBatcher(max_batch_size=32, max_delay_ms=500)
    try:
        import time

        started = time.perf_counter()
        for i in range(20):
            batcher.predict(model, {"pixels": digits.x_test[i : i + 1]})
        assert time.perf_counter() - started < 2.0, "no max_delay wait without concurrent callers"
        assert (batcher.stats.batches, batcher.stats.requests) == (20, 20)
        # Run in the caller's own thread: the batcher's thread never had to wake up for it.
        threads = []
        model.predict = lambda inputs, names=None: threads.append(threading.current_thread()) or {}  # type: ignore[method-assign]
        batcher.predict(model, {"pixels": digits.x_test[:1]})
        assert threads == [threading.current_thread()]
    finally:
        batcher.close()


@pytest.fixture
def stub(tmp_path: Path, model: LoadedModel):  # type: ignore[no-untyped-def]
    samples = SampleStore(tmp_path / "samples.db")
    lock = UpdateLock()
    server = InferenceApi(
        InferenceService(
            lambda: model,
            InferenceStats(),
            "x86-gateway",
            batcher=MicroBatcher(max_batch_size=8, max_delay_ms=2),
            recent=RecentRequests(max_entries=10, max_age_s=60),
            samples=samples,
            update_lock=lock,
        ),
        socket_path=tmp_path / "api.sock",
        tcp_port=None,
        max_message_bytes=1 << 20,
        workers=4,
    )
    server.set_serving(True)
    server.start()
    channel = grpc.insecure_channel(f"unix://{tmp_path / 'api.sock'}")
    yield inference_pb2_grpc.InferenceStub(channel), samples, lock
    channel.close()
    server.stop(0)
    samples.close()


def _request(x: np.ndarray, request_id: str = "") -> inference_pb2.PredictRequest:
    return inference_pb2.PredictRequest(inputs={"pixels": tensor_to_proto(x)}, request_id=request_id)


def test_predict_batch_and_stream_answer_each_request_with_its_own_status(stub, digits: DigitsModels) -> None:  # type: ignore[no-untyped-def]
    client, _, _ = stub
    good, bad = _request(digits.x_test[:2], "a"), _request(digits.x_test[:2, :10], "b")
    batch = client.PredictBatch(inference_pb2.PredictBatchRequest(requests=[good, bad, good]))
    assert [r.error_code for r in batch.responses] == ["", "INVALID_ARGUMENT", ""]
    assert "model expects 64" in batch.responses[1].error_message
    assert list(batch.responses[0].outputs["logits"].shape) == [2, 10]

    streamed = list(client.PredictStream(iter([good, bad, good, good])))
    assert [r.request_id for r in streamed] == ["a", "b", "a", "a"]
    assert [r.error_code for r in streamed] == ["", "INVALID_ARGUMENT", "", ""]


def test_feedback_stores_the_request_inputs_with_the_label(stub, digits: DigitsModels) -> None:  # type: ignore[no-untyped-def]
    client, samples, _ = stub
    client.Predict(_request(digits.x_test[3:4], "req-1"))
    label = tensor_to_proto(np.array([digits.y_test[3]], dtype=np.int64))
    response = client.Feedback(inference_pb2.FeedbackRequest(request_id="req-1", labels={"label": label}))
    assert len(response.sample_id) == 32
    ((inputs, labels),) = samples.samples()
    np.testing.assert_array_equal(inputs["pixels"], digits.x_test[3:4])
    assert labels["label"].tolist() == [digits.y_test[3]]

    with pytest.raises(grpc.RpcError) as info:
        client.Feedback(inference_pb2.FeedbackRequest(request_id="req-1", labels={"label": label}))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND, "feedback joins a request once"
    with pytest.raises(grpc.RpcError) as info:
        client.Feedback(inference_pb2.FeedbackRequest(request_id="never-sent", labels={"label": label}))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND and "unknown" in info.value.details()


def test_update_lock_acquire_release_and_limits(stub) -> None:  # type: ignore[no-untyped-def]
    client, _, lock = stub
    held = client.AcquireUpdateLock(inference_pb2.AcquireLockRequest(holder="camera-app", ttl_s=30))
    assert held.holder == "camera-app" and 29 < held.expires_in_s <= 30
    assert [h.holder for h in lock.holds()] == ["camera-app"]
    assert client.ReleaseUpdateLock(inference_pb2.ReleaseLockRequest(lock_id=held.lock_id)).released
    assert not client.ReleaseUpdateLock(inference_pb2.ReleaseLockRequest(lock_id=held.lock_id)).released
    with pytest.raises(grpc.RpcError) as info:
        client.AcquireUpdateLock(inference_pb2.AcquireLockRequest(holder="x", ttl_s=0))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_update_lock_expires_by_itself() -> None:
    lock = UpdateLock()
    lock.acquire("app", ttl_s=0.2)
    stop = threading.Event()
    assert lock.holds()
    assert lock.wait_free(stop) is True
    assert lock.holds() == []


def test_oversized_requests_get_resource_exhausted(stub) -> None:  # type: ignore[no-untyped-def]
    client, _, _ = stub
    big = np.zeros((5000, 64), np.float32)  # 1.28 MB > the 1 MiB limit of this server
    with pytest.raises(grpc.RpcError) as info:
        client.Predict(_request(big))
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_store_keeps_the_newest_bundles_and_collects_the_rest(tmp_path: Path, keys: Keys, digits: DigitsModels) -> None:
    store = ModelStore(tmp_path / "store")
    digests = []
    for version in range(5):
        archive, digest = build(
            digits.v1 if version % 2 else digits.v2, tmp_path / f"{version}.bundle", keys, version=str(version)
        )
        signed = extract_bundle(archive, tmp_path / f"x{version}")
        store.put_manifest(signed)
        partial = store.partial_path("file", "x")
        partial.write_bytes((tmp_path / f"x{version}" / "model.onnx").read_bytes())
        manifest = Manifest.model_validate_json(signed.manifest)
        if not store.has_blob(manifest.files[0].sha256):
            store.commit_blob(partial, manifest.files[0].sha256)
        store.activate(digest)
        digests.append(digest)
    removed = store.gc(keep=3)
    assert set(removed) == set(digests[:2])
    for digest in digests[2:]:
        store.verified_bundle(digest, {signed.key_id: keys.private_key().public_key()})
    assert store.state().history == tuple(reversed(digests[2:]))
