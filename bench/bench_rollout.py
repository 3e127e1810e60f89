"""Time a rollout of one bundle to N agent processes over a local broker, and chunk throughput.

Run by hand: python bench/bench_rollout.py [--agents 5] [--model-mb 8]
The model is padded with an unused initializer to the requested size, so the chunked transfer
dominates; prints the time from deploy to all-active and MB/s per agent.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgefleet.compression.builder import build_bundle
from edgefleet.local.broker import LocalBroker
from edgefleet.local.fleet import LocalFleet, wait_until
from edgefleet.protocol.signing import load_private_key, write_keypair


def padded_model(path: Path, megabytes: float) -> Path:
    pad = numpy_helper.from_array(
        np.random.default_rng(0).standard_normal(int(megabytes * 262144)).astype(np.float32), "pad"
    )
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "padded",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 4])],
        initializer=[pad],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--agents", type=int, default=5)
    parser.add_argument("--model-mb", type=float, default=8.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_keypair(work, private_name="k.key", public_name="k.pub")
        model = padded_model(work / "m.onnx", args.model_mb)
        bundle, digest = build_bundle(
            model,
            work / "m.bundle",
            name="pad",
            version="1",
            device_class="x86-gateway",
            private_key=load_private_key(work / "k.key"),
        )
        size_mb = model.stat().st_size / 1e6
        with LocalBroker(work / "broker") as broker:
            fleet = LocalFleet(work, broker.url, [work / "k.pub"])
            try:
                fleet.start_coordinator()
                ids = [f"bench-{i}" for i in range(args.agents)]
                for device_id in ids:
                    fleet.add_agent(device_id, "x86-gateway")
                    fleet.start_agent(device_id)
                wait_until(lambda: len(fleet.get("/api/v1/devices")) == args.agents, timeout=60, what="agents")
                fleet.upload(bundle)
                started = time.perf_counter()
                fleet.deploy(digest)
                fleet.wait_active(digest, ids, timeout=600)
                elapsed = time.perf_counter() - started
            finally:
                fleet.stop()
        print(f"broker: {broker.kind}; {args.agents} agents; model {size_mb:.1f} MB; chunk 64 KiB")
        print(f"deploy -> all active: {elapsed:.2f} s; {size_mb * args.agents / elapsed:.1f} MB/s in total")


if __name__ == "__main__":
    main()
