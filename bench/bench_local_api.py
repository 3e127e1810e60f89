"""The local gRPC API's cost, side by side with raw ONNX Runtime in one run, and what shared memory saves.

Run by hand: python bench/bench_local_api.py [--iterations 1000]

  1. the transport's floor: an empty gRPC call (health Check) over the agent's unix socket
  2. a small CNN (3x32x32), batch 1: gRPC Predict p50 vs raw InferenceSession.run p50, and the agent's own
     part (the overhead less the floor)
  3. a 3x640x640 float image (a detector's input, 4.9 MB) into a detector-sized backbone: Predict with the
     bytes in the request, Predict with the image in shared memory (SharedInput, the app's copy into the
     segment counted), each interleaved with raw run, p50 and ratio to raw
Every figure interleaves the paths request by request, so they see the same machine state.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from edgefleet.agent.serving.client import InferenceClient, SharedInput
from edgefleet.agent.serving.model import LoadedModel, load_model
from edgefleet.agent.serving.server import InferenceApi, InferenceService
from edgefleet.agent.telemetry.stats import InferenceStats
from edgefleet.compression.builder import build_bundle
from edgefleet.protocol.bundle import extract_bundle, verify_manifest
from edgefleet.protocol.signing import load_private_key, load_trusted_keys, write_keypair


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def export(net: torch.nn.Module, shape: tuple[int, ...], path: Path) -> Path:
    torch.onnx.export(net.eval(), (torch.zeros(*shape),), str(path), input_names=["x"], output_names=["y"],
                      dynamo=False)  # fmt: skip
    return path


def loaded(onnx: Path, work: Path, sample: np.ndarray) -> LoadedModel:
    work.mkdir(parents=True, exist_ok=True)
    write_keypair(work, private_name="k.key", public_name="k.pub")
    archive, digest = build_bundle(
        onnx, work / f"{onnx.stem}.bundle", name=onnx.stem, version="1", device_class="x86-gateway",
        private_key=load_private_key(work / "k.key"), test_inputs=[{"x": sample}],
    )  # fmt: skip
    folder = work / onnx.stem
    signed = extract_bundle(archive, folder)
    manifest = verify_manifest(signed, load_trusted_keys([work / "k.pub"]))
    return load_model(digest, manifest, folder / "model.onnx")


def raw(onnx: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()  # the agent's session settings: idle threads do not spin
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return ort.InferenceSession(str(onnx), options, providers=["CPUExecutionProvider"])


def interleaved(paths: dict[str, Callable[[], object]], n: int) -> dict[str, float]:
    times: dict[str, list[float]] = {k: [] for k in paths}
    for _ in range(max(20, n // 10)):
        for call in paths.values():
            call()
    for _ in range(n):
        for name, call in paths.items():
            t0 = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--iterations", type=int, default=1000)
    args = parser.parse_args()
    print(f"CPU: {cpu_model()}; onnxruntime {ort.__version__}; p50 in ms, each figure interleaved")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        torch.manual_seed(0)
        cnn = export(torch.nn.Sequential(
            torch.nn.Conv2d(3, 16, 3), torch.nn.ReLU(), torch.nn.Conv2d(16, 16, 3), torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 10),
        ), (1, 3, 32, 32), work / "cnn.onnx")  # fmt: skip
        # A detector-sized backbone (~0.3 GMAC at 640x640: three stride-2 convolutions), so that raw run costs
        # what such a model costs and the fixed part of a request shows as the share it is.
        big = export(torch.nn.Sequential(
            torch.nn.Conv2d(3, 16, 3, stride=2), torch.nn.ReLU(), torch.nn.Conv2d(16, 32, 3, stride=2), torch.nn.ReLU(),
            torch.nn.Conv2d(32, 64, 3, stride=2), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
            torch.nn.Linear(64, 6),
        ), (1, 3, 640, 640), work / "big.onnx")  # fmt: skip
        rng = np.random.default_rng(0)
        small_x = rng.random((1, 3, 32, 32), dtype=np.float32)
        big_x = rng.random((1, 3, 640, 640), dtype=np.float32)
        np.save(work / "cnn.npy", small_x)
        np.save(work / "big.npy", big_x)
        # The agent's API in a process of its own, as on a device: the app (this process) only talks to it.
        spawn = mp.get_context("spawn")
        ready, stop = spawn.Event(), spawn.Event()
        server = spawn.Process(target=_serve, args=(str(work), ready, stop))
        server.start()
        try:
            if not ready.wait(120):
                raise SystemExit("the API process did not start")
            with (
                InferenceClient(f"unix://{work / 'cnn.sock'}") as client,
                InferenceClient(f"unix://{work / 'big.sock'}", max_message_bytes=64 << 20) as big_client,
            ):
                health = health_pb2_grpc.HealthStub(client.channel)
                raw_cnn = raw(cnn)
                small = interleaved({
                    "empty call": lambda: health.Check(health_pb2.HealthCheckRequest()),
                    "Predict": lambda: client.predict({"x": small_x}),
                    "raw": lambda: raw_cnn.run(None, {"x": small_x}),
                }, args.iterations)  # fmt: skip
                own = small["Predict"] - small["raw"] - small["empty call"]
                print(f"1. empty gRPC call (the transport's floor): {small['empty call']:.3f}")
                overhead = small["Predict"] - small["raw"]
                print(f"2. CNN 3x32x32 batch 1: Predict {small['Predict']:.3f}  raw {small['raw']:.3f}  "
                      f"overhead {overhead:.3f} (the agent's own, less the floor: {own:.3f})")  # fmt: skip
                raw_big = raw(big)
                with SharedInput(big_x.nbytes) as segment:

                    def shared_call() -> object:
                        segment.write(big_x)  # what an app does per frame: one copy into the segment
                        return big_client.predict({}, shared={"x": segment})

                    # Each path beside raw on its own: 5 MB allocated per bytes request would also slow the others.
                    n = max(100, args.iterations // 5)
                    pairs = {
                        "bytes": interleaved({"call": lambda: big_client.predict({"x": big_x}),
                                              "raw": lambda: raw_big.run(None, {"x": big_x})}, n),
                        "shared memory": interleaved({"call": shared_call,
                                                      "raw": lambda: raw_big.run(None, {"x": big_x})}, n),
                    }  # fmt: skip
                print("3. 3x640x640 float32 (4.9 MB), each path interleaved with raw run:")
                for label, figures in pairs.items():
                    ratio = figures["call"] / figures["raw"]
                    call, base = figures["call"], figures["raw"]
                    print(f"   Predict, {label:13s}: {call:.3f}  raw {base:.3f}  ratio {ratio:.3f}")
        finally:
            stop.set()
            server.join(30)


def _serve(folder: str, ready: Any, stop: Any) -> None:
    """The API process: both models, each on its own socket, until ``stop``."""
    work = Path(folder)
    apis = []
    for name in ("cnn", "big"):
        model = loaded(work / f"{name}.onnx", work / f"srv-{name}", np.load(work / f"{name}.npy"))
        api = InferenceApi(
            InferenceService(lambda m=model: m, InferenceStats(), "x86-gateway"),
            socket_path=work / f"{name}.sock", tcp_port=None, max_message_bytes=64 << 20, workers=8,
        )  # fmt: skip
        api.set_serving(True)
        api.start()
        apis.append(api)
    ready.set()
    stop.wait()
    for api in apis:
        api.stop(0)


if __name__ == "__main__":
    main()
