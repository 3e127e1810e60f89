"""The local gRPC inference API: Predict, ModelInfo (with the model card), GetAsset and gRPC health checking."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import NoReturn

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from edgefleet.agent.errors import InputError
from edgefleet.agent.learning.samples import RecentRequests, SampleStore
from edgefleet.agent.serving.batcher import MicroBatcher
from edgefleet.agent.serving.model import LoadedModel
from edgefleet.agent.serving.sequences import SequenceError, Sequences
from edgefleet.agent.serving.shared_memory import input_from_proto
from edgefleet.agent.serving.update_lock import UpdateLock
from edgefleet.agent.telemetry.stats import InferenceStats
from edgefleet.protocol.errors import ProtocolError
from edgefleet.protocol.grpc_gen import inference_pb2, inference_pb2_grpc
from edgefleet.protocol.tensors import TensorSpec, tensor_from_proto, tensor_to_proto

__all__ = ["SERVICE_NAME", "InferenceApi", "InferenceService"]

log = logging.getLogger(__name__)

SERVICE_NAME = "edgefleet.inference.v1.Inference"
MAX_BATCH_REQUESTS = 1024
ASSET_CHUNK_BYTES = 1 << 20  # well under gRPC's 4 MiB message limit


def _info(spec: TensorSpec) -> inference_pb2.TensorInfo:
    return inference_pb2.TensorInfo(
        name=spec.name, dtype=spec.dtype, shape=[-1 if d is None else d for d in spec.shape]
    )


def _abort(context: grpc.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
    context.abort(code, message)
    raise AssertionError("grpc abort returned")  # abort raises; this tells the type checker


class InferenceService(inference_pb2_grpc.InferenceServicer):
    def __init__(
        self,
        current: Callable[[], LoadedModel | None],
        stats: InferenceStats,
        device_class: str,
        *,
        batcher: MicroBatcher | None = None,
        recent: RecentRequests | None = None,
        samples: SampleStore | None = None,
        update_lock: UpdateLock | None = None,
        shedding: Callable[[], str | None] = lambda: None,
    ) -> None:
        self._current = current
        self._stats = stats
        self._device_class = device_class
        self._batcher = batcher
        self._recent = recent
        self._samples = samples
        self._lock = update_lock or UpdateLock()
        self._shedding = shedding  # why requests are refused now (the chip is over its critical limit), or None
        self._sequences = Sequences()

    # -- inference -----------------------------------------------------------------------
    def _infer(self, request: inference_pb2.PredictRequest) -> inference_pb2.PredictResponse:
        """One request; raises _Failure with the status it deserves."""
        model = self._current()
        if model is None:
            self._stats.record_error("unavailable")
            raise _Failure(grpc.StatusCode.UNAVAILABLE, "no model is active on this device yet")
        if (hot := self._shedding()) is not None:
            self._stats.record_error("overheated")
            raise _Failure(grpc.StatusCode.UNAVAILABLE, hot)
        try:
            converted = {name: input_from_proto(t) for name, t in request.inputs.items()}
            inputs = {name: array for name, (array, _) in converted.items()}
            shared = any(is_shared for _, is_shared in converted.values())
            names = list(request.output_names) or None
            started = time.perf_counter()
            if request.sequence_id:  # state kept here between the sequence's requests; never batched with others
                outputs = self._sequences.run(
                    model, request.sequence_id, inputs, names, start=request.sequence_start,
                    end=request.sequence_end, predict=model.predict,
                )  # fmt: skip
            elif self._batcher is not None:
                outputs = self._batcher.predict(model, inputs, names)
            else:
                outputs = model.predict(inputs, names)
            latency_ms = (time.perf_counter() - started) * 1000
        except (ProtocolError, InputError) as exc:
            self._stats.record_error("invalid_argument")
            raise _Failure(grpc.StatusCode.INVALID_ARGUMENT, exc.reason) from None
        except SequenceError as exc:
            self._stats.record_error(exc.code.lower())
            raise _Failure(grpc.StatusCode[exc.code], exc.reason) from None
        except Exception as exc:  # a runtime failure on valid input: report it, keep serving
            self._stats.record_error("runtime")
            log.exception("inference failed on bundle %s", model.digest[:12])
            raise _Failure(grpc.StatusCode.INTERNAL, f"inference failed: {exc}") from None
        self._stats.record(latency_ms)
        if model.drift is not None:
            model.drift.observe(inputs)
        if request.request_id and self._recent is not None:
            # Kept for a later Feedback: not a view of the app's shared memory, which it may overwrite next.
            kept = {name: array.copy() for name, array in inputs.items()} if shared else inputs
            self._recent.remember(request.request_id, kept, model.digest)
        return inference_pb2.PredictResponse(
            outputs={name: tensor_to_proto(value) for name, value in outputs.items()},
            request_id=request.request_id,
            model_name=model.manifest.name,
            model_version=model.manifest.version,
            bundle_digest=model.digest,
            latency_ms=latency_ms,
        )

    def _infer_or_error(self, request: inference_pb2.PredictRequest) -> inference_pb2.PredictResponse:
        try:
            return self._infer(request)
        except _Failure as failure:
            return inference_pb2.PredictResponse(
                request_id=request.request_id, error_code=failure.code.name, error_message=failure.message
            )

    def Predict(
        self, request: inference_pb2.PredictRequest, context: grpc.ServicerContext
    ) -> inference_pb2.PredictResponse:
        try:
            return self._infer(request)
        except _Failure as failure:
            _abort(context, failure.code, failure.message)

    def PredictBatch(
        self, request: inference_pb2.PredictBatchRequest, context: grpc.ServicerContext
    ) -> inference_pb2.PredictBatchResponse:
        if len(request.requests) > MAX_BATCH_REQUESTS:
            self._stats.record_error("resource_exhausted")
            _abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED, f"at most {MAX_BATCH_REQUESTS} requests per batch")
        return inference_pb2.PredictBatchResponse(responses=[self._infer_or_error(r) for r in request.requests])

    def PredictStream(
        self, request_iterator: Iterator[inference_pb2.PredictRequest], context: grpc.ServicerContext
    ) -> Iterator[inference_pb2.PredictResponse]:
        for request in request_iterator:
            yield self._infer_or_error(request)

    def ModelInfo(
        self, request: inference_pb2.ModelInfoRequest, context: grpc.ServicerContext
    ) -> inference_pb2.ModelInfoResponse:
        model = self._current()
        if model is None:
            return inference_pb2.ModelInfoResponse(loaded=False, device_class=self._device_class)
        return inference_pb2.ModelInfoResponse(
            loaded=True,
            model_name=model.manifest.name,
            model_version=model.manifest.version,
            bundle_digest=model.digest,
            device_class=self._device_class,
            runtime=model.runtime.key,
            runtime_skipped=model.skipped_runtimes,
            inputs=[_info(s) for s in model.inputs],
            outputs=[_info(s) for s in model.outputs],
            activated_at=model.activated_at.isoformat(),
            model_card=model.manifest.card().model_dump_json(),
        )

    def GetAsset(
        self, request: inference_pb2.AssetRequest, context: grpc.ServicerContext
    ) -> Iterator[inference_pb2.AssetChunk]:
        """A file of the active bundle its card lists as an asset, in chunks of ASSET_CHUNK_BYTES."""
        model = self._current()
        if model is None:
            _abort(context, grpc.StatusCode.UNAVAILABLE, "no model is active")
        if request.bundle_digest and request.bundle_digest != model.digest:
            _abort(
                context, grpc.StatusCode.FAILED_PRECONDITION,
                f"bundle {request.bundle_digest[:12]} is no longer active ({model.digest[:12]} is); read ModelInfo",
            )  # fmt: skip
        asset = next((a for a in model.manifest.assets if a.name == request.name), None)
        if asset is None:
            names = ", ".join(a.name for a in model.manifest.assets) or "none"
            _abort(
                context, grpc.StatusCode.NOT_FOUND, f"no asset {request.name!r} in this bundle (its assets: {names})"
            )
        if model.locate is None:
            _abort(context, grpc.StatusCode.UNAVAILABLE, "this agent cannot reach the bundle's files")
        entry = model.manifest.file(asset.name)
        with open(model.locate(entry), "rb") as fh:  # verified by hash when the bundle was activated
            data = fh.read(ASSET_CHUNK_BYTES)
            yield inference_pb2.AssetChunk(data=data, total_size=entry.size)
            while data := fh.read(ASSET_CHUNK_BYTES):
                yield inference_pb2.AssetChunk(data=data)

    # -- feedback ------------------------------------------------------------------------
    def Feedback(
        self, request: inference_pb2.FeedbackRequest, context: grpc.ServicerContext
    ) -> inference_pb2.FeedbackResponse:
        if self._recent is None or self._samples is None:
            _abort(context, grpc.StatusCode.UNIMPLEMENTED, "feedback is not enabled on this agent")
        if not request.labels:
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "feedback needs at least one label tensor")
        try:
            labels = {name: tensor_from_proto(t) for name, t in request.labels.items()}
        except ProtocolError as exc:
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, exc.reason)
        recent = self._recent.take(request.request_id)
        if recent is None:
            _abort(
                context,
                grpc.StatusCode.NOT_FOUND,
                f"request id {request.request_id!r} is unknown or older than {self._recent.max_age_s:.0f}s "
                "(send request_id with Predict to keep its inputs)",
            )
        sample_id = self._samples.add(request.request_id, recent.bundle_digest, recent.inputs, labels)
        return inference_pb2.FeedbackResponse(sample_id=sample_id)

    # -- update lock ---------------------------------------------------------------------
    def AcquireUpdateLock(
        self, request: inference_pb2.AcquireLockRequest, context: grpc.ServicerContext
    ) -> inference_pb2.LockResponse:
        try:
            hold = self._lock.acquire(request.holder, request.ttl_s)
        except ValueError as exc:
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except OverflowError as exc:
            _abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        return inference_pb2.LockResponse(lock_id=hold.lock_id, holder=hold.holder, expires_in_s=hold.remaining_s)

    def ReleaseUpdateLock(
        self, request: inference_pb2.ReleaseLockRequest, context: grpc.ServicerContext
    ) -> inference_pb2.ReleaseLockResponse:
        return inference_pb2.ReleaseLockResponse(released=self._lock.release(request.lock_id))


class _Failure(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class InferenceApi:
    """The gRPC server on a Unix socket (and optionally loopback TCP)."""

    def __init__(
        self,
        service: InferenceService,
        *,
        socket_path: Path,
        tcp_port: int | None,
        max_message_bytes: int,
        workers: int,
    ) -> None:
        options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ]
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="api"), options=options
        )
        inference_pb2_grpc.add_InferenceServicer_to_server(service, self.server)
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        socket_path.parent.mkdir(parents=True, exist_ok=True)
        socket_path.unlink(missing_ok=True)  # a stale socket from a killed run
        self.socket_path = socket_path
        self.server.add_insecure_port(f"unix://{socket_path}")
        self.tcp_port = None if tcp_port is None else self.server.add_insecure_port(f"127.0.0.1:{tcp_port}")
        self.set_serving(False)

    def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", SERVICE_NAME):
            self.health.set(name, status)

    def start(self) -> None:
        self.server.start()
        log.info(
            "local API on unix://%s%s",
            self.socket_path,
            f" and 127.0.0.1:{self.tcp_port}" if self.tcp_port else "",
        )

    def stop(self, grace_s: float = 2.0) -> None:
        self.health.enter_graceful_shutdown()
        self.server.stop(grace_s).wait(grace_s + 1)
        self.socket_path.unlink(missing_ok=True)
