"""Cost of drift tracking per request (batch 1), next to the model's own inference time: input drift
for inputs of a few sizes, and output confidence drift for a 10-class classifier's logits. The model is
a small MLP (features -> 256 -> 10) in ONNX Runtime on one thread, about the smallest a device serves:
the overhead in percent of it is an upper bound, and it carries over to a Pi as both scale with its CPU.

Run by hand: python bench/bench_drift.py
"""

from __future__ import annotations

import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from edgefleet.agent.telemetry.drift import ConfidenceMonitor, DriftMonitor
from edgefleet.compression.stats import confidence_stats
from edgefleet.protocol.model_card import InputStats

QUANTILES = [i / 10 for i in range(11)]


def _mlp_us(features: int, rng: np.random.Generator, runs: int = 3000) -> float:
    """Microseconds per batch-1 inference of a features -> 256 -> 10 MLP (random weights) on one thread."""
    w1 = numpy_helper.from_array(rng.standard_normal((features, 256)).astype(np.float32) * 0.05, "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((256, 10)).astype(np.float32) * 0.05, "w2")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("MatMul", ["r", "w2"], ["logits"])],
        "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, features])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])], [w1, w2],
    )  # fmt: skip
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    x = rng.standard_normal((1, features)).astype(np.float32)
    for _ in range(200):
        session.run(None, {"x": x})
    started = time.perf_counter()
    for _ in range(runs):
        session.run(None, {"x": x})
    return (time.perf_counter() - started) / runs * 1e6


def main() -> None:
    rng = np.random.default_rng(0)
    for features in (64, 768, 3072):
        reference = rng.standard_normal((2000, features)).astype(np.float32)
        stats = InputStats(
            samples=2000, quantiles=QUANTILES, edges=np.quantile(reference, QUANTILES, axis=0).T.tolist(),
            mean=reference.mean(0).tolist(), std=reference.std(0).tolist(),
        )  # fmt: skip
        monitor = DriftMonitor({"x": stats}, window=500)
        rows = rng.standard_normal((3000, 1, features)).astype(np.float32)
        for row in rows[:200]:
            monitor.observe({"x": row})
        started = time.perf_counter()
        for row in rows:
            monitor.observe({"x": row})
        per_request_us = (time.perf_counter() - started) / len(rows) * 1e6
        started = time.perf_counter()
        monitor.score()
        score_ms = (time.perf_counter() - started) * 1e3
        model_us = _mlp_us(features, rng)
        binned_us = score_ms * 1e3 / 500  # the score bins the newest 500 rows: at most that per request
        print(f"{features:5d} features: observe {per_request_us:5.1f} us/request on the request path "
              f"({per_request_us / model_us:5.1%} of a {model_us:.0f} us MLP inference); score {score_ms:.2f} ms "
              f"per telemetry window off it (bins the 500 newest rows: <= {binned_us:.1f} us/request)")  # fmt: skip

    logits = rng.standard_normal((5000, 10)).astype(np.float32)
    logits[np.arange(5000), rng.integers(0, 10, 5000)] += 4.0
    reference = confidence_stats("logits", logits[:2000])
    assert reference is not None
    confidence = ConfidenceMonitor(reference, window=500)
    rows = [{"logits": logits[i : i + 1]} for i in range(2000, 5000)]
    for outputs in rows[:200]:
        confidence.observe(outputs)
    started = time.perf_counter()
    for outputs in rows:
        confidence.observe(outputs)
    per_request_us = (time.perf_counter() - started) / len(rows) * 1e6
    started = time.perf_counter()
    confidence.score()
    score_ms = (time.perf_counter() - started) * 1e3
    print(
        f"   10 classes: confidence observe {per_request_us:5.1f} us/request; score {score_ms:.2f} ms per window "
        f"(bins the 500 newest outputs)"
    )


if __name__ == "__main__":
    main()
