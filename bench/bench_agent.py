"""The agent's serving overhead, measured side by side with raw ONNX Runtime in one run.

Run by hand: python bench/bench_agent.py [--seconds 5] [--iterations 2000]

Models, all exported from PyTorch: a small CNN (3x32x32 images), a small transformer encoder (2 layers,
d=128, 32 tokens) and a dense MLP (256 -> 3 x 2048 -> 10, 8.9M weights, 36 MB: more than this
machine's 32 MB L3 cache, so batch 1 is bound by memory bandwidth, the case micro-batching is for;
the two small models spend most of a gRPC call outside the model, where batching cannot help). Figures:
  1. in-process LoadedModel.predict vs InferenceSession.run, batch 1 and 32 (median ratio)
  2. gRPC Predict over the unix socket: p50/p99 vs raw, batch 1
  3. 32 concurrent clients (4 processes x 8 threads) sending batch-1 requests, one in flight each:
     throughput with micro-batching vs without, and vs raw ORT running batches of 32 back to back; once
     with unary Predict calls, once with each client on its own PredictStream
  4. the daemon: cold start to first inference, and idle RSS with the CNN loaded
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import queue
import signal
import statistics
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import psutil
import torch

from edgefleet.agent.serving.batcher import MicroBatcher
from edgefleet.agent.serving.client import InferenceClient
from edgefleet.agent.serving.model import LoadedModel, load_model
from edgefleet.agent.serving.server import InferenceApi, InferenceService
from edgefleet.agent.telemetry.stats import InferenceStats
from edgefleet.compression.builder import build_bundle
from edgefleet.local.broker import LocalBroker
from edgefleet.local.fleet import LocalFleet, wait_until
from edgefleet.protocol.bundle import Manifest, extract_bundle
from edgefleet.protocol.grpc_gen import inference_pb2, inference_pb2_grpc
from edgefleet.protocol.signing import load_private_key, write_keypair
from edgefleet.protocol.tensors import tensor_to_proto


class SmallCnn(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(32, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
        )  # fmt: skip
        self.head = torch.nn.Linear(64, 10)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(image).flatten(1))


class TinyEncoder(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(1000, 128)
        layer = torch.nn.TransformerEncoderLayer(128, 4, 256, batch_first=True, dropout=0.0)
        self.encoder = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = torch.nn.Linear(128, 8)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(tokens)).mean(dim=1))


class DenseMlp(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = torch.nn.Sequential(
            torch.nn.Linear(256, 2048), torch.nn.ReLU(), torch.nn.Linear(2048, 2048), torch.nn.ReLU(),
            torch.nn.Linear(2048, 2048), torch.nn.ReLU(), torch.nn.Linear(2048, 10),
        )  # fmt: skip

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features)


def export(module: torch.nn.Module, sample: torch.Tensor, name: str, path: Path) -> Path:
    # Not under no_grad: there PyTorch takes the fused transformer fast path, which has no ONNX export.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(), (sample,), str(path), input_names=[name], output_names=["logits"],
            dynamic_axes={name: {0: "batch"}, "logits": {0: "batch"}}, opset_version=17, dynamo=False,
        )  # fmt: skip
    return path


def sample_input(kind: str, batch: int) -> np.ndarray:
    rng = np.random.default_rng(batch)
    if kind == "cnn":
        return rng.standard_normal((batch, 3, 32, 32)).astype(np.float32)
    if kind == "dense":
        return rng.standard_normal((batch, 256)).astype(np.float32)
    return rng.integers(0, 1000, (batch, 32)).astype(np.int64)


def bundle_and_load(onnx_path: Path, work: Path, key_path: Path) -> tuple[Path, LoadedModel]:
    archive, digest = build_bundle(
        onnx_path, work / f"{onnx_path.stem}.bundle", name=onnx_path.stem, version="1",
        device_class="x86-gateway", private_key=load_private_key(key_path), rtol=1e-3, atol=1e-4,
    )  # fmt: skip
    folder = work / f"{onnx_path.stem}-x"
    signed = extract_bundle(archive, folder)
    return archive, load_model(digest, Manifest.model_validate_json(signed.manifest), folder / "model.onnx")


def raw_session(path: Path) -> ort.InferenceSession:
    """The baseline: ONNX Runtime on the same file with the agent's session settings (idle threads do
    not spin, the agent's default), so that the ratios show the agent's overhead, not a setting."""
    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def in_process(
    model: LoadedModel, raw: ort.InferenceSession, feeds: dict[str, np.ndarray], n: int
) -> tuple[float, float]:
    agent_t, raw_t = [], []
    for _ in range(50):
        model.predict(feeds)
        raw.run(None, feeds)
    for _ in range(n):  # interleaved: both see the same machine state
        t0 = time.perf_counter()
        model.predict(feeds)
        t1 = time.perf_counter()
        raw.run(None, feeds)
        t2 = time.perf_counter()
        agent_t.append(t1 - t0)
        raw_t.append(t2 - t1)
    return statistics.median(agent_t) * 1e3, statistics.median(raw_t) * 1e3


def serve(model: LoadedModel, socket_path: Path, max_batch: int) -> tuple[InferenceApi, MicroBatcher]:
    batcher = MicroBatcher(max_batch_size=max_batch, max_delay_ms=2.0)
    api = InferenceApi(
        InferenceService(lambda: model, InferenceStats(), "x86-gateway", batcher=batcher),
        socket_path=socket_path, tcp_port=None, max_message_bytes=64 << 20, workers=40,
    )  # fmt: skip
    api.set_serving(True)
    api.start()
    return api, batcher


def _in_threads(loop: Callable[[int], None], threads: int) -> None:
    """Run ``loop(0)`` ... ``loop(threads - 1)`` at once, each in its own thread, and wait for all."""
    workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()


def _client_process(target: str, name: str, data: np.ndarray, seconds: float, threads: int, out: mp.Queue) -> None:
    stop_at = time.monotonic() + seconds
    counts = [0] * threads

    def loop(i: int) -> None:
        with InferenceClient(target) as client:
            while time.monotonic() < stop_at:
                client.predict({name: data})
                counts[i] += 1

    _in_threads(loop, threads)
    out.put(sum(counts))


def _stream_client_process(
    target: str, name: str, data: np.ndarray, seconds: float, threads: int, out: mp.Queue
) -> None:
    """Like ``_client_process``, but each client holds one PredictStream and sends its next request
    when the answer to the previous one arrived (one request in flight per client, as with Predict)."""
    stop_at = time.monotonic() + seconds
    counts = [0] * threads
    request = inference_pb2.PredictRequest(inputs={name: tensor_to_proto(data)})

    def loop(i: int) -> None:
        pending: queue.Queue[inference_pb2.PredictRequest | None] = queue.Queue()

        def requests() -> Iterator[inference_pb2.PredictRequest]:
            while (item := pending.get()) is not None:
                yield item

        with grpc.insecure_channel(target) as channel:
            pending.put(request)
            for response in inference_pb2_grpc.InferenceStub(channel).PredictStream(requests()):
                if response.error_code:
                    raise RuntimeError(f"{response.error_code}: {response.error_message}")
                counts[i] += 1
                pending.put(request if time.monotonic() < stop_at else None)

    _in_threads(loop, threads)
    out.put(sum(counts))


def concurrent_throughput(target: str, name: str, data: np.ndarray, seconds: float, *, stream: bool = False) -> float:
    # spawn, not fork: a child forked from a process that has used gRPC can break its HTTP/2 connections.
    ctx = mp.get_context("spawn")
    out: mp.Queue = ctx.Queue()
    client = _stream_client_process if stream else _client_process
    procs = [ctx.Process(target=client, args=(target, name, data, seconds, 8, out)) for _ in range(4)]
    for p in procs:
        p.start()
    total = sum(out.get() for _ in procs)
    for p in procs:
        p.join()
    return total / seconds


def raw_batched_throughput(raw: ort.InferenceSession, name: str, data: np.ndarray, seconds: float) -> float:
    stop_at = time.monotonic() + seconds
    rows = 0
    while time.monotonic() < stop_at:
        raw.run(None, {name: data})
        rows += data.shape[0]
    return rows / seconds


def daemon_figures(work: Path, archive: Path, key_pub: Path) -> tuple[float, float]:
    """Cold start to first inference with a stored model, and idle RSS (MB) of the daemon."""
    with LocalBroker(work / "broker") as broker:
        fleet = LocalFleet(work / "fleet", broker.url, [key_pub])
        (work / "fleet").mkdir()
        try:
            fleet.start_coordinator()
            fleet.add_agent("bench-1", "x86-gateway")
            fleet.start_agent("bench-1")
            wait_until(lambda: fleet.device("bench-1"), timeout=30, what="agent")
            digest = fleet.upload(archive)
            fleet.deploy(digest, ["bench-1"])
            fleet.wait_active(digest, ["bench-1"])
            fleet.stop_agent("bench-1", signal.SIGTERM)
            started = time.perf_counter()
            fleet.start_agent("bench-1")
            with InferenceClient(fleet.agents["bench-1"].target) as client:
                client.predict({"image": sample_input("cnn", 1)})
            cold_start = time.perf_counter() - started
            time.sleep(3)
            proc = fleet.agents["bench-1"].proc
            assert proc is not None
            rss_mb = psutil.Process(proc.pid).memory_info().rss / 1e6
        finally:
            fleet.stop()
    return cold_start, rss_mb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--iterations", type=int, default=2000)
    args = parser.parse_args()
    print(f"CPU: {os.cpu_count()} cores; onnxruntime {ort.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_keypair(work, private_name="k.key", public_name="k.pub")
        models = {
            "cnn": ("image", export(SmallCnn(), torch.randn(1, 3, 32, 32), "image", work / "cnn.onnx")),
            "encoder": (
                "tokens",
                export(TinyEncoder(), torch.randint(0, 1000, (1, 32)), "tokens", work / "encoder.onnx"),
            ),
            "dense": ("features", export(DenseMlp(), torch.randn(1, 256), "features", work / "dense.onnx")),
        }
        loaded = {kind: bundle_and_load(path, work, work / "k.key") for kind, (_, path) in models.items()}
        print("\n1. in-process predict vs raw InferenceSession.run (median ms; target ratio <= 1.05)")
        for kind, (name, path) in models.items():
            model = loaded[kind][1]
            raw = raw_session(path)
            for batch in (1, 32):
                agent_ms, raw_ms = in_process(
                    model, raw, {name: sample_input(kind, batch)}, args.iterations // batch + 50
                )
                print(
                    f"   {kind:8s} batch {batch:2d}: agent {agent_ms:.3f}  raw {raw_ms:.3f}  "
                    f"ratio {agent_ms / raw_ms:.3f}"
                )

        print("\n2. gRPC Predict (unix socket, one client, batch 1) vs raw (ms)")
        for kind, (name, path) in models.items():
            model = loaded[kind][1]
            raw = raw_session(path)
            api, batcher = serve(model, work / f"{kind}.sock", max_batch=32)
            data = sample_input(kind, 1)
            grpc_t, raw_t = [], []
            with InferenceClient(f"unix://{work / f'{kind}.sock'}") as client:
                for _ in range(100):
                    client.predict({name: data})
                for _ in range(args.iterations):
                    t0 = time.perf_counter()
                    client.predict({name: data})
                    t1 = time.perf_counter()
                    raw.run(None, {name: data})
                    grpc_t.append((t1 - t0) * 1e3)
                    raw_t.append((time.perf_counter() - t1) * 1e3)
            api.stop(0)
            batcher.close()
            p = lambda xs, q: float(np.percentile(xs, q))  # noqa: E731
            print(
                f"   {kind:8s}: gRPC p50 {p(grpc_t, 50):.3f} p99 {p(grpc_t, 99):.3f}   "
                f"raw p50 {p(raw_t, 50):.3f} p99 {p(raw_t, 99):.3f}"
            )

        print(
            f"\n3. 32 concurrent clients, batch-1 requests, {args.seconds:.0f}s each "
            "(requests/s; targets: >= 3x unbatched, >= 0.7x raw batched)"
        )
        for kind, (name, path) in models.items():
            model = loaded[kind][1]
            data = sample_input(kind, 1)
            results = {}
            for label, max_batch, stream in (
                ("unbatched", 1, False), ("micro-batched", 32, False),
                ("unbatched stream", 1, True), ("micro-batched stream", 32, True),
            ):  # fmt: skip
                socket_path = work / f"{kind}-{max_batch}-{stream}.sock"
                api, batcher = serve(model, socket_path, max_batch)
                results[label] = concurrent_throughput(f"unix://{socket_path}", name, data, args.seconds, stream=stream)
                stats = batcher.stats
                api.stop(0)
                batcher.close()
                if max_batch > 1:
                    results[f"mean batch{' stream' if stream else ''}"] = stats.mean_batch
            raw = raw_session(path)
            results["raw batched (32)"] = raw_batched_throughput(raw, name, sample_input(kind, 32), args.seconds)
            print(
                f"   {kind:8s}: unbatched {results['unbatched']:.0f}/s  micro-batched {results['micro-batched']:.0f}/s "
                f"(mean batch {results['mean batch']:.1f})  raw batched {results['raw batched (32)']:.0f} rows/s  "
                f"-> {results['micro-batched'] / results['unbatched']:.2f}x unbatched, "
                f"{results['micro-batched'] / results['raw batched (32)']:.2f}x raw batched"
            )
            print(
                f"   {'':8s}  one PredictStream per client: unbatched {results['unbatched stream']:.0f}/s  "
                f"micro-batched {results['micro-batched stream']:.0f}/s (mean batch {results['mean batch stream']:.1f})"
                f"  -> {results['micro-batched stream'] / results['unbatched stream']:.2f}x unbatched, "
                f"{results['micro-batched stream'] / results['raw batched (32)']:.2f}x raw batched"
            )

        cold, rss = daemon_figures(work, loaded["cnn"][0], work / "k.pub")
        print(
            f"\n4. daemon with the CNN: cold start to first inference {cold:.2f}s (target <= 2 s); "
            f"idle RSS {rss:.0f} MB (target <= 120 MB)"
        )


if __name__ == "__main__":
    main()
