"""A campaign's base weights from the registry, and its result registered back as a new version:
FP32 ONNX bundles (one per device class of the base version) with lineage and a privacy report,
in stage ``staging``, ready for `edgefleet compress` and a rollout."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import ArrayRecord

from edgefleet.coordinator.errors import Conflict, NotFound
from edgefleet.coordinator.registry.artifacts import Registry
from edgefleet.coordinator.registry.models import ModelRegistry
from edgefleet.federated.disclosure import disclosures
from edgefleet.federated.models import build_model
from edgefleet.federated.server.rounds import CampaignOutcome
from edgefleet.federated.spec import CampaignSpec
from edgefleet.federated.weights import arrays_to_model, load_onnx_weights, model_to_arrays
from edgefleet.protocol.bundle import FileEntry, Manifest
from edgefleet.protocol.model_card import Lineage, PrivacyReport, Recipe

__all__ = ["BaseVersion", "divergence", "initial_arrays", "load_base", "privacy_report", "register_result"]

log = logging.getLogger(__name__)


@dataclass
class BaseVersion:
    version: str
    digest: str  # the FP32 ONNX bundle the weights come from
    manifest: Manifest
    model_path: Path
    device_classes: list[str]
    locate: Callable[[FileEntry], Path]  # where each of the bundle's files lies in the registry


def load_base(spec: CampaignSpec, models: ModelRegistry, registry: Registry) -> BaseVersion:
    """The base version's FP32 ONNX bundle: the weights every campaign round starts from."""
    version = models.resolve(spec.model, spec.base_version)
    rows = [b for b in registry.db.bundles() if b["name"] == spec.model and b["version"] == version]
    if not rows:
        raise NotFound(f"no bundles of {spec.model} {version}")
    for row in rows:
        manifest = Manifest.model_validate_json(registry.signed_manifest(row["digest"]).manifest)
        if manifest.model_format == "onnx" and manifest.precision == "fp32":
            sha = next(f.sha256 for f in manifest.files if f.name == manifest.model_file)
            classes = sorted({r["device_class"] for r in rows})
            return BaseVersion(
                version, row["digest"], manifest, registry.artifact_path("file", sha), classes,
                lambda entry: registry.artifact_path("file", entry.sha256),
            )  # fmt: skip
    raise Conflict(f"{spec.model} {version} has no FP32 ONNX bundle to train from (federated training needs one)")


def initial_arrays(spec: CampaignSpec, base: BaseVersion, *, allowed: Collection[str] = ()) -> ArrayRecord:
    model = load_onnx_weights(build_model(spec.architecture, spec.architecture_args, allowed=allowed), base.model_path)
    return model_to_arrays(model)


def divergence(outcome: CampaignOutcome, base: BaseVersion) -> str | None:
    """Why the campaign's result is no model worth registering (training diverged), or None.

    Non-finite weights or losses, or an accuracy on the held-out data at or below chance (1 / classes,
    from the base model's output width) where the base model did better.
    """
    for name, array in outcome.arrays.items():
        if not np.isfinite(array.numpy()).all():
            return f"training diverged: the result's {name} holds NaN or infinite weights"
    last = next((r for r in reversed(outcome.rounds) if r.status == "ok"), None)
    if last is None:
        return None
    for where, figures in (("training", last.train_metrics), ("held-out evaluation", last.evaluation)):
        bad = [k for k, v in figures.items() if not np.isfinite(v)]
        if bad:
            return f"training diverged: round {last.round} {where} {', '.join(bad)} is not a number"
    shape = base.manifest.outputs[0].shape if base.manifest.outputs else []
    classes = shape[-1] if shape and shape[-1] else None
    accuracy, before = last.evaluation.get("accuracy"), outcome.initial_evaluation.get("accuracy")
    at_chance = bool(classes and classes > 1 and accuracy is not None and accuracy <= 1.0 / classes)
    if at_chance and (before is None or before > 1.0 / classes):  # type: ignore[operator]
        return (
            f"training diverged: held-out accuracy {accuracy:.3f} after round {last.round} is at chance "
            f"(1/{classes})" + (f", the base model had {before:.3f}" if before is not None else "")
        )
    return None


def privacy_report(spec: CampaignSpec, outcome: CampaignOutcome) -> PrivacyReport:
    ok_rounds = [r for r in outcome.rounds if r.status == "ok"]
    clients = len({p["device"] for r in ok_rounds for p in r.participants})
    privacy = spec.privacy
    if privacy is None:
        return PrivacyReport(
            mode="none",
            rounds=len(ok_rounds),
            clients=clients,
            secure_aggregation=spec.secure_aggregation,
            disclosed=disclosures(spec),
        )
    if privacy.mode in ("local", "distributed"):
        sigmas = [p["noise_multiplier"] for r in ok_rounds for p in r.participants if "noise_multiplier" in p]
        own = [p["local_epsilon"] for r in ok_rounds for p in r.participants if "local_epsilon" in p]
        return PrivacyReport(
            mode=privacy.mode,
            # The guarantee is per device; the model's statement is the worst device's cumulative spend.
            epsilon=max(outcome.client_epsilon.values(), default=0.0),
            delta=privacy.delta,
            accountant=f"opacus-{privacy.accountant}",
            noise_multiplier=min(sigmas) if sigmas else privacy.noise_multiplier,
            clip_norm=privacy.clip_norm,
            rounds=len(ok_rounds),
            clients=clients,
            unit="sample",
            secure_aggregation=spec.secure_aggregation,
            local_epsilon=max(own) if own else None,
            disclosed=disclosures(spec),
        )
    return PrivacyReport(
        mode="central",
        epsilon=outcome.central_epsilon or 0.0,
        delta=privacy.delta,
        accountant="opacus-rdp (no sampling amplification)",
        noise_multiplier=privacy.noise_multiplier,
        clip_norm=privacy.clip_norm,
        rounds=len(ok_rounds),
        clients=clients,
        unit="client",
        disclosed=disclosures(spec),
    )


def register_result(
    campaign_id: str,
    spec: CampaignSpec,
    outcome: CampaignOutcome,
    base: BaseVersion,
    *,
    registry: Registry,
    models: ModelRegistry,
    key: Ed25519PrivateKey,
    allowed: Collection[str] = (),
) -> tuple[str, list[str]]:
    """Export the campaign's model, build and register a signed bundle per device class, stage it.

    Returns (new version, bundle digests)."""
    from edgefleet.compression.builder import build_bundle
    from edgefleet.compression.export import export_onnx

    model = arrays_to_model(build_model(spec.architecture, spec.architecture_args, allowed=allowed), outcome.arrays)
    inputs, outputs = base.manifest.inputs, base.manifest.outputs
    samples = tuple(np.zeros([1 if d is None else d for d in s.shape], dtype=np.dtype(s.dtype)) for s in inputs)
    import torch

    version = f"{base.version}+fl.{campaign_id}"[:64]
    report = privacy_report(spec, outcome)
    final = next((r.evaluation for r in reversed(outcome.rounds) if r.status == "ok" and r.evaluation), {})
    metrics = {f"federated_{k}": float(v) for k, v in final.items()}
    metrics |= {f"base_{k}": float(v) for k, v in outcome.initial_evaluation.items()}
    test_inputs = [feeds for feeds, _ in base.manifest.all_test_vectors(base.locate)] or None
    digests = []
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = export_onnx(
            model,
            tuple(torch.from_numpy(s) for s in samples),
            Path(tmp) / "model.onnx",
            input_names=[s.name for s in inputs],
            output_names=[s.name for s in outputs],
        )
        for device_class in base.device_classes:
            archive, _ = build_bundle(
                onnx_path,
                Path(tmp) / f"{device_class}.bundle",
                name=spec.model,
                version=version,
                device_class=device_class,
                private_key=key,
                test_inputs=test_inputs,
                parent=base.digest,
                labels=base.manifest.labels,
                preprocessing=base.manifest.preprocessing,
                reference_stats=base.manifest.reference_stats,
                reference_confidence=base.manifest.reference_confidence,
                recipe=Recipe(
                    technique="federated",
                    params={
                        "strategy": spec.strategy,
                        "rounds": len(outcome.rounds),
                        "local_epochs": spec.local_epochs,
                        "architecture": spec.architecture,
                    },
                    tool="flwr+opacus",
                ),
                metrics=metrics,
                lineage=Lineage(parent_version=base.version, parent_digest=base.digest, campaign=campaign_id),
                privacy=report,
            )
            digest, _ = registry.add_archive(archive)
            digests.append(digest)
    models.set_stage(spec.model, version, "staging")
    log.info("campaign %s registered %s %s (%d bundles) in staging", campaign_id, spec.model, version, len(digests))
    return version, digests
