"""Latency of the agent's local gRPC API against raw ONNX Runtime on the same model, side by side.

Run by hand: python bench/bench_inference.py [--requests 2000]
Prints medians and p95 for single-sample requests and the ratio agent/raw.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from edgefleet.agent.serving.client import InferenceClient
from edgefleet.agent.serving.model import load_model
from edgefleet.agent.serving.server import InferenceApi, InferenceService
from edgefleet.agent.telemetry.stats import InferenceStats
from edgefleet.compression.builder import build_bundle
from edgefleet.compression.export import export_onnx
from edgefleet.local.digits import load_digits_data, train_digits_mlp
from edgefleet.protocol.bundle import Manifest, extract_bundle
from edgefleet.protocol.signing import generate_keypair


def _percentiles(samples: list[float]) -> tuple[float, float]:
    return statistics.median(samples), float(np.percentile(samples, 95))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = load_digits_data()
        model, _ = train_digits_mlp(data)
        onnx_path = export_onnx(model, torch.from_numpy(data.x_test[:1]), work / "m.onnx", input_name="pixels")
        private_pem, _ = generate_keypair()
        key = load_pem_private_key(private_pem, None)
        archive, digest = build_bundle(
            onnx_path,
            work / "m.bundle",
            name="digits",
            version="1",
            device_class="bench",
            private_key=key,  # type: ignore[arg-type]
        )
        signed = extract_bundle(archive, work / "x")
        loaded = load_model(digest, Manifest.model_validate_json(signed.manifest), work / "x" / "model.onnx")
        api = InferenceApi(
            InferenceService(lambda: loaded, InferenceStats(), "bench"),
            socket_path=work / "api.sock",
            tcp_port=None,
            max_message_bytes=16 << 20,
            workers=4,
        )
        api.start()
        raw = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        rows = [data.x_test[i % len(data.x_test)][None, :] for i in range(args.requests)]
        raw_ms, agent_ms = [], []
        with InferenceClient(f"unix://{work / 'api.sock'}") as client:
            for row in rows[:100]:  # warm-up both
                raw.run(None, {"pixels": row})
                client.predict({"pixels": row})
            for row in rows:  # interleaved so both see the same machine state
                t0 = time.perf_counter()
                raw.run(None, {"pixels": row})
                t1 = time.perf_counter()
                client.predict({"pixels": row})
                t2 = time.perf_counter()
                raw_ms.append((t1 - t0) * 1000)
                agent_ms.append((t2 - t1) * 1000)
        api.stop(0)
    raw_p50, raw_p95 = _percentiles(raw_ms)
    agent_p50, agent_p95 = _percentiles(agent_ms)
    print(f"requests: {args.requests}, single-sample digits MLP")
    print(f"raw onnxruntime     p50 {raw_p50:.3f} ms  p95 {raw_p95:.3f} ms")
    print(f"agent gRPC (unix)   p50 {agent_p50:.3f} ms  p95 {agent_p95:.3f} ms")
    print(f"overhead ratio p50 agent/raw: {agent_p50 / raw_p50:.1f}x (+{agent_p50 - raw_p50:.3f} ms per request)")


if __name__ == "__main__":
    main()
