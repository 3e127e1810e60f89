"""Kill the agent with SIGKILL at random moments of download and activation, restart it, and check
that every restart serves a verified model. Shared by tests/test_chaos.py and bench/chaos_kill.py.
"""

from __future__ import annotations

import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgefleet.agent.serving.client import InferenceClient
from edgefleet.local.fleet import LocalFleet

__all__ = ["ChaosReport", "padded_identity_model", "run_chaos"]


def padded_identity_model(path: Path, megabytes: float, seed: int) -> Path:
    """y = x (float32[N, 4]) plus an unused initializer of ``megabytes``, so downloads take a while."""
    pad = np.random.default_rng(seed).standard_normal(int(megabytes * 262144)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "padded",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 4])],
        initializer=[numpy_helper.from_array(pad, "pad")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@dataclass
class ChaosReport:
    runs: int = 0
    served: dict[str, int] = field(default_factory=dict)  # digest -> restarts that served it
    delays_s: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def run_chaos(
    fleet: LocalFleet, device_id: str, digests: list[str], *, runs: int, max_delay_s: float, seed: int
) -> ChaosReport:
    """Deploy the digests in turn; after each deploy, SIGKILL at a random delay and restart.

    After every restart the agent must serve one of ``digests`` and answer a prediction correctly.
    """
    rng = random.Random(seed)
    report = ChaosReport()
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    for run in range(runs):
        target = digests[run % len(digests)]
        fleet.deploy(target, [device_id])
        delay = rng.uniform(0.0, max_delay_s)
        time.sleep(delay)
        fleet.stop_agent(device_id, signal.SIGKILL)
        fleet.start_agent(device_id)
        report.runs += 1
        report.delays_s.append(delay)
        with InferenceClient(fleet.agents[device_id].target) as client:
            info = client.model_info()
            if not info.loaded or info.bundle_digest not in digests:
                report.failures.append(f"run {run}: serving {info.bundle_digest or 'nothing'} after delay {delay:.3f}s")
                continue
            result = client.predict({"x": x})
            if not np.array_equal(result.outputs["y"], x):
                report.failures.append(f"run {run}: wrong output from {info.bundle_digest[:12]}")
            report.served[info.bundle_digest] = report.served.get(info.bundle_digest, 0) + 1
    return report
