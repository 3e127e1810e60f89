"""A bundle loaded on a runtime: input checking, inference and the activation self-test."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from edgefleet.agent.errors import ActivationError, InputError
from edgefleet.agent.runtimes import Runtime, RuntimeOptions, open_runtime
from edgefleet.agent.telemetry.drift import ConfidenceMonitor, DriftMonitor
from edgefleet.protocol.bundle import FileEntry, Manifest
from edgefleet.protocol.errors import BundleError, ProtocolError
from edgefleet.protocol.messages import BundleRef
from edgefleet.protocol.tensors import TensorSpec, check_against_spec

__all__ = ["LoadedModel", "load_model"]

DEFAULT_CHAIN = ["onnxruntime-cpu"]


@dataclass
class LoadedModel:
    digest: str
    manifest: Manifest
    runtime: Runtime
    skipped_runtimes: list[str] = field(default_factory=list)
    activated_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    drift_window: int = 500
    locate: Callable[[FileEntry], Path] | None = None  # where the bundle's other files lie (stored test vectors)

    def __post_init__(self) -> None:
        # Precomputed once: predict runs its checks on every request, so they must cost little.
        self._specs = {spec.name: spec for spec in self.manifest.inputs}
        self._fast = {
            spec.name: (
                np.dtype(spec.dtype),
                len(spec.shape),
                [(i, d) for i, d in enumerate(spec.shape) if d is not None],
            )
            for spec in self.manifest.inputs
        }
        self._output_names = [spec.name for spec in self.manifest.outputs]
        self.drift = (
            DriftMonitor(self.manifest.reference_stats, window=self.drift_window)
            if self.manifest.reference_stats
            else None
        )
        self.confidence_drift = (
            ConfidenceMonitor(self.manifest.reference_confidence, window=self.drift_window)
            if self.manifest.reference_confidence is not None
            else None
        )

    @property
    def ref(self) -> BundleRef:
        return BundleRef(digest=self.digest, name=self.manifest.name, version=self.manifest.version)

    @property
    def inputs(self) -> list[TensorSpec]:
        return self.manifest.inputs

    @property
    def outputs(self) -> list[TensorSpec]:
        return self.manifest.outputs

    def predict(self, inputs: dict[str, np.ndarray], output_names: list[str] | None = None) -> dict[str, np.ndarray]:
        """Check names, dtypes and shapes against the manifest, then run; raise InputError on misfit.

        The outputs feed the confidence drift window (when the manifest has a reference for it).
        """
        outputs = self._run(inputs, output_names)
        if self.confidence_drift is not None:
            self.confidence_drift.observe(outputs)
        return outputs

    def _run(self, inputs: dict[str, np.ndarray], output_names: list[str] | None) -> dict[str, np.ndarray]:
        if inputs.keys() != self._fast.keys():
            missing = sorted(set(self._fast) - set(inputs))
            unknown = sorted(set(inputs) - set(self._fast))
            raise InputError(f"inputs must be exactly {sorted(self._fast)}; missing {missing}, unknown {unknown}")
        for name, array in inputs.items():
            dtype, rank, fixed = self._fast[name]
            if array.dtype != dtype or array.ndim != rank or any(array.shape[i] != d for i, d in fixed):
                try:
                    check_against_spec(array, self._specs[name])  # the slow path that words the reason
                except ProtocolError as exc:
                    raise InputError(exc.reason) from None
        if output_names:
            names = list(output_names)
            unknown_out = sorted(set(names) - set(self._output_names))
            if unknown_out:
                raise InputError(f"unknown outputs {unknown_out}; the model has {self._output_names}")
        else:
            names = self._output_names
        return self.runtime.run(inputs, names)

    def self_test(self) -> None:
        """Warm up, then run the manifest's test vectors; raise ActivationError on any mismatch."""
        if self.manifest.stored_test_vectors and self.locate is None:
            raise ActivationError("the bundle's stored test vectors cannot be found (no file locator)")
        try:
            vectors = self.manifest.all_test_vectors(self.locate or (lambda entry: Path(entry.name)))
        except (BundleError, OSError) as exc:
            raise ActivationError(f"test vectors unreadable: {getattr(exc, 'reason', exc)}") from None
        for i, (feeds, expected) in enumerate(vectors):
            try:
                got = self._run(feeds, list(expected))  # test vectors are no traffic: no drift
            except InputError as exc:
                raise ActivationError(f"test vector {i}: {exc.reason}") from None
            for name, want in expected.items():
                if got[name].shape != want.shape or not np.allclose(
                    got[name], want, rtol=self.manifest.rtol, atol=self.manifest.atol
                ):
                    if got[name].shape != want.shape:
                        raise ActivationError(
                            f"test vector {i}, output {name!r}: shape {list(got[name].shape)} "
                            f"({got[name].dtype}), the manifest's is {list(want.shape)} ({want.dtype})"
                        )
                    err = float(np.max(np.abs(got[name].astype(np.float64) - want), initial=0.0))
                    raise ActivationError(
                        f"test vector {i}, output {name!r} of shape {list(want.shape)}: result differs from the "
                        f"manifest (max abs error {err}, rtol {self.manifest.rtol}, atol {self.manifest.atol})"
                    )


def load_model(
    digest: str,
    manifest: Manifest,
    model_path: Path,
    *,
    chain: list[str] | None = None,
    options: RuntimeOptions | None = None,
    drift_window: int = 500,
    locate: Callable[[FileEntry], Path] | None = None,
) -> LoadedModel:
    """Load on the first runtime of ``chain`` that can, check the I/O signature, run the self-test.

    ``locate`` says where each of the bundle's other files lies (its stored test vectors); by default
    beside ``model_path`` under its own name, as an extracted bundle has them."""
    opts = replace(
        options or RuntimeOptions(),
        precision=manifest.precision,
        model_digest=manifest.file(manifest.model_file).sha256,
    )
    try:
        runtime, skipped = open_runtime(chain or DEFAULT_CHAIN, manifest.model_format, model_path, opts)
    except RuntimeError as exc:
        raise ActivationError(str(exc)) from None
    if [s.name for s in runtime.inputs] != [s.name for s in manifest.inputs]:
        raise ActivationError(
            f"model inputs {[s.name for s in runtime.inputs]} differ from the manifest's "
            f"{[s.name for s in manifest.inputs]}"
        )
    model = LoadedModel(
        digest=digest, manifest=manifest, runtime=runtime, skipped_runtimes=skipped, drift_window=drift_window,
        locate=locate or (lambda entry: model_path.parent / entry.name),
    )  # fmt: skip
    model.self_test()
    return model
