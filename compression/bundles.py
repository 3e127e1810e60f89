"""Signed bundles for the chosen candidate of each device class, with the full model card.

The test vectors are real validation rows with the outputs computed *by the candidate itself* on
its runtime, so the device's self-test checks the bytes it received; the tolerance suits the
precision, since another CPU's INT8 or FP16 kernels may round differently. How the candidate
compares to the reference on the same rows is recorded in ``metrics``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefleet.compression.builder import build_bundle, verify_batching
from edgefleet.compression.candidates.base import Candidate
from edgefleet.compression.evaluate import feed_names, fixed_batch, open_runtime_for
from edgefleet.compression.metrics import Metric
from edgefleet.compression.source import ReferenceModel
from edgefleet.protocol.bundle import Batching
from edgefleet.protocol.model_card import ConfidenceStats, InputStats, Lineage, PreprocessingStep, Recipe

__all__ = ["TOLERANCES", "BundleSpec", "candidate_metrics", "write_bundle"]

log = logging.getLogger(__name__)

# precision -> (rtol, atol as a fraction of the largest test-vector output magnitude)
TOLERANCES = {"fp32": (1e-3, 1e-4), "fp16": (1e-2, 1e-2), "int8": (5e-2, 3e-2)}


@dataclass
class BundleSpec:
    """What every bundle of one compression run shares."""

    name: str
    version: str
    private_key: Ed25519PrivateKey
    reference: ReferenceModel
    metric: Metric
    test_rows: dict[str, np.ndarray]  # validation rows, by reference input name
    reference_stats: dict[str, InputStats]
    labels: list[str] | None = None
    preprocessing: list[PreprocessingStep] | None = None
    parent_version: str | None = None
    parent_bundle: str | None = None  # digest of the bundle these derive from
    metadata: dict[str, str] | None = None
    reference_confidence: ConfidenceStats | None = None  # the reference model's, on the validation rows


def candidate_metrics(candidate: Candidate, metric: Metric, reference_metric: float) -> dict[str, float]:
    m = candidate.measured
    assert m is not None
    values = {
        f"metric.{metric.name}": m.metric,
        f"reference.{metric.name}": reference_metric,
        "metric_drop": m.drop,
        "reference_vs_candidate.cosine": m.cosine_to_reference,
        "latency_ms.batch_1": m.latency_ms_b1,
        f"latency_ms.batch_{m.batch_n}": m.latency_ms_bn,
        "size_mb": m.size_mb,
        "transfer_mb": m.transfer_mb,
    }
    if m.top1_agreement is not None:
        values["reference_vs_candidate.top1_agreement"] = m.top1_agreement
    if m.peak_rss_mb is not None:
        values["peak_rss_mb"] = m.peak_rss_mb
    return {k: round(float(v), 6) for k, v in values.items()}


def write_bundle(
    candidate: Candidate, device_class: str, out: Path, spec: BundleSpec, reference_metric: float
) -> tuple[Path, str, Batching]:
    """Compute test vectors with the candidate on its runtime, verify whether it batches, then build and sign
    its bundle; return its path, digest and declared batching."""
    assert candidate.path is not None and candidate.model_format in ("onnx", "tflite")
    runtime, _ = open_runtime_for(candidate, threads=1)
    mapping = feed_names(runtime, spec.reference.input_names)  # converters may rename inputs
    rows = len(next(iter(spec.test_rows.values())))
    step = fixed_batch(runtime) or 4  # a model fixed to batch 1 (TFLite) gets two single rows
    batches = [slice(0, 1), slice(1, min(rows, 1 + step))] if rows > 1 else [slice(0, 1)]
    test_inputs = [{mapping[n]: np.ascontiguousarray(a[s]) for n, a in spec.test_rows.items()} for s in batches]
    outputs = [s.name for s in runtime.outputs]
    test_outputs = [runtime.run(feeds, outputs) for feeds in test_inputs]
    scale = max(
        (float(np.max(np.abs(v))) for o in test_outputs for v in o.values() if v.size and v.dtype.kind == "f"),
        default=1.0,
    )
    confidence = spec.reference_confidence
    if confidence is not None and confidence.output not in outputs:
        if len(outputs) == 1 == len(spec.reference.outputs):  # a converter renamed the only output
            confidence = confidence.model_copy(update={"output": outputs[0]})
        else:
            log.info("candidate %s has no output %r: no reference confidence", candidate.name, confidence.output)
            confidence = None
    rtol, atol_fraction = TOLERANCES[candidate.precision]
    atol = max(atol_fraction * scale, 1e-6)
    metadata = dict(spec.metadata or {})
    metadata.update(
        {"candidate": candidate.name, "measured_on": candidate.measured.runtime if candidate.measured else ""}
    )
    # Verified on the candidate's own runtime, with the rows the test vectors come from.
    batching = verify_batching(
        lambda feeds: runtime.run(feeds, outputs), runtime.inputs, runtime.outputs, test_inputs, rtol=rtol, atol=atol
    )
    path, digest = build_bundle(
        candidate.path,
        out,
        name=spec.name,
        version=spec.version,
        device_class=device_class,
        private_key=spec.private_key,
        test_inputs=test_inputs,
        test_outputs=test_outputs,
        io_specs=(runtime.inputs, runtime.outputs),
        parent=spec.parent_bundle,
        metadata=metadata,
        rtol=rtol,
        atol=atol,
        model_format=candidate.model_format,
        precision=candidate.precision,
        labels=spec.labels,
        preprocessing=spec.preprocessing,
        reference_stats={mapping[k]: v for k, v in spec.reference_stats.items()},
        reference_confidence=confidence,
        recipe=Recipe(technique=candidate.technique, params=dict(candidate.params), tool=candidate.tool),
        metrics=candidate_metrics(candidate, spec.metric, reference_metric),
        lineage=Lineage(parent_version=spec.parent_version, parent_digest=spec.reference.digest),
        batching=batching,
    )
    return path, digest, batching
