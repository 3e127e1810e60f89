"""Build a signed bundle from an ONNX model: describe its I/O, compute test vectors, sign, pack.

Needs only ONNX Runtime, so bundles can be built on any machine with the core install.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import onnxruntime as ort
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefleet.protocol.bundle import (
    INLINE_VECTOR_BYTES,
    MAX_DECLARED_BATCH,
    MAX_MANIFEST_BYTES,
    Batching,
    FileEntry,
    Manifest,
    StoredTestVector,
    TestVector,
    pack_bundle,
    sha256_file,
    sign_manifest,
    store_test_vector,
)
from edgefleet.protocol.errors import BundleError, ProtocolError
from edgefleet.protocol.model_card import (
    Asset,
    ConfidenceStats,
    InputStats,
    Lineage,
    OutputRole,
    PreprocessingStep,
    PrivacyReport,
    Recipe,
    SequenceSpec,
)
from edgefleet.protocol.tensors import DTYPES, TensorData, TensorSpec, check_against_spec, onnx_type_to_dtype

__all__ = ["build_bundle", "describe_onnx", "detect_model_format", "open_for_build", "sample_inputs", "verify_batching"]

log = logging.getLogger(__name__)


def describe_onnx(session: ort.InferenceSession) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The model's inputs and outputs; BundleError naming the first one whose type the wire contract does not
    carry (strings, bfloat16): such a model is refused when its bundle is built, never at activation."""

    def spec(arg: ort.NodeArg) -> TensorSpec:
        shape = [d if isinstance(d, int) and d >= 0 else None for d in (arg.shape or [])]
        try:
            dtype = onnx_type_to_dtype(arg.type)
        except ProtocolError:
            raise BundleError(
                f"{arg.name!r} is a {arg.type}: edgefleet carries only the numeric types {', '.join(DTYPES)} "
                "(no strings or bfloat16); give the model an input or output of one of these"
            ) from None
        return TensorSpec(name=arg.name, dtype=dtype, shape=shape)

    return [spec(a) for a in session.get_inputs()], [spec(a) for a in session.get_outputs()]


def sample_inputs(specs: list[TensorSpec], rng: np.random.Generator, batch: int = 2) -> dict[str, np.ndarray]:
    """Random inputs that fit the specs; dynamic dimensions take ``batch``."""
    feeds = {}
    for spec in specs:
        shape = [batch if d is None else d for d in spec.shape]
        dtype = np.dtype(spec.dtype)
        if dtype.kind == "f":
            feeds[spec.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind == "b":
            feeds[spec.name] = rng.integers(0, 2, shape).astype(bool)
        else:
            feeds[spec.name] = rng.integers(0, 10, shape).astype(dtype)
    return feeds


def verify_batching(
    run: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]] | None,
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
    feeds_list: list[dict[str, np.ndarray]],
    *,
    rtol: float,
    atol: float,
) -> Batching:
    """Whether the model batches along its first axis: each row run alone must give what the same rows give
    run together, within the bundle's tolerance. A dynamic first dimension is not enough: it may be time
    (a time-major recurrent model), and concatenating two callers' rows would mix their state. ``run``
    runs the model (outputs by name); None: it cannot be run here."""
    if run is None:
        return Batching(max_batch_size=0, reason="not verified: the model cannot be run here to check batches")
    fixed = [s.name for s in (*inputs, *outputs) if s.shape[:1] != [None]]
    if fixed:
        return Batching(max_batch_size=0, reason=f"the first dimension is not dynamic on {', '.join(fixed)}")
    feeds = next((f for f in feeds_list if _rows(f) >= 2), None)
    if feeds is None:  # single-row test inputs: two of them, one after the other
        try:
            feeds = {name: np.concatenate([f[name] for f in feeds_list[:2]]) for name in feeds_list[0]}
        except (ValueError, IndexError) as exc:
            return Batching(max_batch_size=0, reason=f"not verified: no two rows to batch ({exc})")
    rows = _rows(feeds)
    if rows < 2:
        return Batching(max_batch_size=0, reason="not verified: the inputs disagree on their first dimension")
    try:
        together = run(feeds)
        alone = [run({k: v[i : i + 1] for k, v in feeds.items()}) for i in range(rows)]
    except Exception as exc:  # the model refuses a batch of this size, or a row on its own
        return Batching(max_batch_size=0, reason=f"a batch of {rows} rows does not run: {str(exc)[:300]}")
    for name in [o.name for o in outputs]:
        batched, singles = np.asarray(together[name]), [np.asarray(a[name]) for a in alone]
        if batched.shape[:1] != (rows,):
            return Batching(max_batch_size=0, reason=f"output {name!r} has {batched.shape[:1]} rows for {rows} inputs")
        if not np.allclose(batched, np.concatenate(singles), rtol=rtol, atol=atol):
            return Batching(max_batch_size=0, reason=f"output {name!r} of rows run together and run alone differ "
                            "(the first axis is not a batch axis)")  # fmt: skip
    return Batching(
        max_batch_size=MAX_DECLARED_BATCH,
        reason=f"verified: {rows} rows run together equal each row run alone (rtol {rtol}, atol {atol})",
    )


def _rows(feeds: dict[str, np.ndarray]) -> int:
    sizes = {a.shape[0] if a.ndim else -1 for a in feeds.values()}
    return next(iter(sizes)) if len(sizes) == 1 else -1


def _test_vectors(
    feeds_list: list[dict[str, np.ndarray]], results_list: list[dict[str, np.ndarray]], staging: Path
) -> tuple[list[TestVector], list[StoredTestVector]]:
    """Small vectors inline in the manifest; one over INLINE_VECTOR_BYTES as a file written to ``staging``, so
    that the signed manifest stays small whatever the size of the model's inputs (a 640x640 detector)."""
    inline: list[TestVector] = []
    stored: list[StoredTestVector] = []
    for feeds, results in zip(feeds_list, results_list, strict=True):
        if sum(np.asarray(a).nbytes for a in [*feeds.values(), *results.values()]) <= INLINE_VECTOR_BYTES:
            inputs = {k: TensorData.from_array(np.asarray(v)) for k, v in feeds.items()}
            inline.append(TestVector(inputs=inputs, outputs={k: TensorData.from_array(v) for k, v in results.items()}))
        else:
            name = f"test-vector-{len(stored)}.bin"
            stored.append(store_test_vector(feeds, results, staging / name, name))
    return inline, stored


Runner = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]  # feeds -> every output, by name


def detect_model_format(path: Path) -> Literal["onnx", "tflite"]:
    """TFLite by its suffix or its flatbuffer identifier ("TFL3" at byte 4), else ONNX."""
    if path.suffix.lower() == ".tflite":
        return "tflite"
    if path.suffix.lower() == ".onnx":
        return "onnx"
    with open(path, "rb") as fh:
        return "tflite" if fh.read(8)[4:8] == b"TFL3" else "onnx"


def open_for_build(model_path: Path, model_format: str) -> tuple[list[TensorSpec], list[TensorSpec], Runner]:
    """The model's inputs, outputs and a way to run it here: ONNX Runtime for ONNX, LiteRT for TFLite (the
    runtime the agent uses). BundleError, with the runtime's reason (a custom op it lacks, by name), if it
    cannot load the model."""
    if model_format == "onnx":
        try:
            session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime's pybind errors share no useful base class
            raise BundleError(f"{model_path}: ONNX Runtime cannot load it: {_first_line(exc)}") from None
        inputs, outputs = describe_onnx(session)
        names = [o.name for o in outputs]
        return inputs, outputs, lambda feeds: dict(zip(names, session.run(names, feeds), strict=True))
    if model_format == "tflite":
        from edgefleet.agent.runtimes import RuntimeOptions, backend, import_errors

        cls = backend("litert")
        if cls is None:
            raise BundleError(f"{model_path}: LiteRT is not available here ({import_errors.get('litert', '')})")
        try:
            runtime = cls(model_path, RuntimeOptions(intra_op_threads=1, inter_op_threads=1))
        except Exception as exc:  # LiteRT raises ValueError or RuntimeError, e.g. for an unresolved custom op
            raise BundleError(f"{model_path}: LiteRT cannot load it: {_first_line(exc)}") from None
        names = [o.name for o in runtime.outputs]
        return runtime.inputs, runtime.outputs, lambda feeds: runtime.run(feeds, names)
    raise BundleError(f"{model_path}: unknown model format {model_format!r} (onnx or tflite)")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:500]


def build_bundle(
    model_path: Path,
    out: Path,
    *,
    name: str,
    version: str,
    device_class: str,
    private_key: Ed25519PrivateKey,
    test_inputs: list[dict[str, np.ndarray]] | None = None,
    parent: str | None = None,
    metadata: dict[str, str] | None = None,
    rtol: float = 1e-4,
    atol: float = 1e-5,
    seed: int = 0,
    model_format: Literal["onnx", "tflite"] = "onnx",
    precision: Literal["fp32", "fp16", "int8"] = "fp32",
    io_specs: tuple[list[TensorSpec], list[TensorSpec]] | None = None,
    test_outputs: list[dict[str, np.ndarray]] | None = None,
    labels: list[str] | None = None,
    preprocessing: list[PreprocessingStep] | None = None,
    reference_stats: dict[str, InputStats] | None = None,
    reference_confidence: ConfidenceStats | None = None,
    recipe: Recipe | None = None,
    metrics: dict[str, float] | None = None,
    lineage: Lineage | None = None,
    privacy: PrivacyReport | None = None,
    mirrors: list[str] | None = None,
    batching: Batching | None = None,
    min_version: str | None = None,
    assets: list[tuple[Path, Asset]] | None = None,
    output_roles: dict[str, OutputRole] | None = None,
    description: str | None = None,
    sequence: SequenceSpec | None = None,
) -> tuple[Path, str]:
    """Write a signed bundle archive to ``out``; return (path, bundle digest).

    Test vectors are ``test_inputs`` (or two random batches) with the outputs the model's own runtime gives
    now (ONNX Runtime, or LiteRT for ``model_format="tflite"``); a caller that ran the model elsewhere gives
    its ``io_specs`` and the ``test_outputs`` it computed for ``test_inputs``. A model that cannot be loaded
    or that fails on its test inputs is a BundleError with the runtime's reason. ``batching`` is what the manifest
    declares; by default it is verified here (``verify_batching``). The remaining keywords fill the
    manifest's model card (see ``protocol.model_card``); ``assets`` are files packed beside the model
    (each under its Asset's name), hashed like it and served to apps by the agent.
    """
    run: Runner | None = None
    if io_specs is not None:
        inputs, outputs = io_specs
    else:
        inputs, outputs, run = open_for_build(model_path, model_format)
    rng = np.random.default_rng(seed)
    feeds_list = test_inputs if test_inputs is not None else [sample_inputs(inputs, rng) for _ in range(2)]
    if test_outputs is not None and len(test_outputs) != len(feeds_list):
        raise ValueError(f"{len(test_outputs)} test outputs for {len(feeds_list)} test inputs")
    results_list = []
    for i, feeds in enumerate(feeds_list):
        if test_outputs is not None:
            results_list.append({o.name: np.asarray(test_outputs[i][o.name]) for o in outputs})
        elif run is not None:
            try:
                results_list.append({k: np.asarray(v) for k, v in run(feeds).items()})
            except Exception as exc:  # the runtime's own error, whatever its class: the model refused them
                made = "given" if test_inputs is not None else "generated (every dynamic dimension 2, integers 0..9)"
                raise BundleError(
                    f"the model fails on test input {i} ({made}): {_first_line(exc)}"
                    + ("" if test_inputs is not None else "; give real inputs (bundle create --test-inputs FILE.npz)")
                ) from None
        else:
            raise ValueError(f"a {model_format} model needs test_outputs")
    if sequence is not None:
        _check_states(sequence, inputs, outputs, results_list)
    if batching is None:
        batching = verify_batching(run, inputs, outputs, feeds_list, rtol=rtol, atol=atol)
    log.info("%s %s: batching %s (%s)", name, version, batching.max_batch_size or "off", batching.reason)
    model_name = "model.onnx" if model_format == "onnx" else f"model.{model_format}"
    with tempfile.TemporaryDirectory(prefix="edgefleet-bundle-") as tmp:
        staging = Path(tmp)
        vectors, stored = _test_vectors(feeds_list, results_list, staging)
        shutil.copyfile(model_path, staging / model_name)  # hashed and packed from one unchanging copy
        files = {model_name: staging / model_name} | {v.file: staging / v.file for v in stored}
        for source, asset in assets or []:
            if asset.name in files:
                raise BundleError(f"asset {asset.name!r}: the bundle already has a file of that name")
            if not source.is_file():
                raise BundleError(f"asset {asset.name!r}: {source} is not a file")
            files[asset.name] = staging / asset.name
            files[asset.name].parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, files[asset.name])
        manifest = Manifest(
            name=name,
            version=version,
            device_class=device_class,
            model_format=model_format,
            precision=precision,
            model_file=model_name,
            inputs=inputs,
            outputs=outputs,
            files=[FileEntry(name=n, sha256=sha256_file(p), size=p.stat().st_size) for n, p in files.items()],
            test_vectors=vectors,
            stored_test_vectors=stored,
            batching=batching,
            rtol=rtol,
            atol=atol,
            min_version=min_version,
            parent=parent,
            metadata=metadata or {},
            labels=labels,
            preprocessing=preprocessing or [],
            reference_stats=reference_stats or {},
            reference_confidence=reference_confidence,
            recipe=recipe,
            metrics=metrics or {},
            lineage=lineage,
            privacy=privacy,
            mirrors=mirrors or [],
            description=description,
            output_roles=output_roles or {},
            assets=[asset for _, asset in assets or []],
            sequence=sequence,
        )
        signed = sign_manifest(manifest, private_key)
        if len(signed.manifest.encode()) > MAX_MANIFEST_BYTES:
            raise BundleError(
                f"the manifest would be {len(signed.manifest.encode())} bytes, over {MAX_MANIFEST_BYTES}: "
                "its reference statistics or labels are too large"
            )
        pack_bundle(signed, files, out)
        log.info("built bundle %s %s for %s: %s", name, version, device_class, signed.digest[:12])
    return out, signed.digest


def _check_states(
    sequence: SequenceSpec, inputs: list[TensorSpec], outputs: list[TensorSpec], results: list[dict[str, np.ndarray]]
) -> None:
    """Each declared state output, as the model made it on the test inputs, must fit the input it feeds."""
    by_name = {s.name: s for s in inputs}
    output_names = {s.name for s in outputs}
    for state in sequence.states:
        if state.input not in by_name or state.output not in output_names:
            raise BundleError(f"sequence state {state.output} -> {state.input}: the model has no such output/input")
        for i, result in enumerate(results):
            try:
                check_against_spec(result[state.output], by_name[state.input])
            except ProtocolError as exc:
                raise BundleError(
                    f"sequence state {state.output} -> {state.input}: on test input {i} the output cannot feed the "
                    f"input ({exc.reason})"
                ) from None
