"""The bundle format: a signed manifest plus content-addressed files, and its tar archive.

A bundle's identity (its *digest*) is the sha256 of the exact manifest bytes that were signed.
The archive holds ``manifest.json`` (a ``SignedManifest``) and ``files/<name>`` for each file.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import math
import posixpath
import tarfile
import zlib
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from packaging.version import InvalidVersion, Version
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edgefleet.protocol.errors import BundleError, ProtocolError, UnsafeArchive, describe_errors
from edgefleet.protocol.model_card import (
    Asset,
    AssetInfo,
    ConfidenceStats,
    InputStats,
    Lineage,
    ModelCard,
    OutputRole,
    PreprocessingStep,
    PrivacyReport,
    Recipe,
    SequenceSpec,
)
from edgefleet.protocol.signing import TrustedKeys, key_id, sign_bytes, verify_bytes
from edgefleet.protocol.tensors import DTYPES, TensorData, TensorSpec, array_from_bytes

__all__ = [
    "INLINE_VECTOR_BYTES",
    "MANIFEST_NAME",
    "MAX_BUNDLE_BYTES",
    "MAX_DECLARED_BATCH",
    "MAX_MANIFEST_BYTES",
    "Batching",
    "FileEntry",
    "Manifest",
    "SignedManifest",
    "StoredTestVector",
    "TensorSlice",
    "TestVector",
    "extract_bundle",
    "is_downgrade",
    "pack_bundle",
    "sha256_file",
    "sign_manifest",
    "store_test_vector",
    "verify_files",
    "verify_manifest",
]

MANIFEST_NAME = "manifest.json"
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
MAX_BUNDLE_BYTES = 2 * 1024 * 1024 * 1024
MAX_FILES = 64
SHA256 = r"^[0-9a-f]{64}$"


class FileEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=200, description="Relative POSIX path inside the bundle.")
    sha256: str = Field(pattern=SHA256)
    size: int = Field(ge=0, le=MAX_BUNDLE_BYTES)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, name: str) -> str:
        return safe_member_name(name)


class TestVector(BaseModel):
    """Inputs and the outputs the bundle's builder computed for them, inline (small ones)."""

    __test__ = False  # not a pytest class
    model_config = ConfigDict(extra="forbid")

    inputs: dict[str, TensorData]
    outputs: dict[str, TensorData]


INLINE_VECTOR_BYTES = 64 * 1024  # a test vector with more tensor bytes is a file of the bundle, not manifest text


class TensorSlice(BaseModel):
    """One tensor of a stored test vector: its bytes (little-endian, C order) at ``offset`` of the file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dtype: str
    shape: list[Annotated[int, Field(ge=0)]] = Field(max_length=32)
    offset: int = Field(ge=0, le=MAX_BUNDLE_BYTES)

    @field_validator("dtype")
    @classmethod
    def _known_dtype(cls, dtype: str) -> str:
        if dtype not in DTYPES:
            raise ValueError(f"unsupported dtype {dtype!r}")
        return dtype

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * np.dtype(self.dtype).itemsize


class StoredTestVector(BaseModel):
    """A test vector too large for the manifest: its tensors one after the other in ``file``, an entry of
    the bundle's files (hashed like the model, so covered by the signature)."""

    __test__ = False  # not a pytest class
    model_config = ConfigDict(extra="forbid")

    file: str = Field(description="Name of the entry in `files` that holds the tensors' bytes.")
    inputs: dict[str, TensorSlice]
    outputs: dict[str, TensorSlice]

    def arrays(self, raw: bytes) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """(inputs, outputs) from the file's bytes; BundleError if a tensor does not lie inside them."""

        def read(tensors: dict[str, TensorSlice]) -> dict[str, np.ndarray]:
            arrays = {}
            for name, t in tensors.items():
                if t.offset + t.nbytes > len(raw):
                    raise BundleError(f"test vector file {self.file!r}: tensor {name!r} runs past its end")
                try:
                    arrays[name] = array_from_bytes(raw[t.offset : t.offset + t.nbytes], t.dtype, t.shape)
                except ProtocolError as exc:
                    raise BundleError(f"test vector file {self.file!r}, tensor {name!r}: {exc.reason}") from None
            return arrays

        return read(self.inputs), read(self.outputs)


def store_test_vector(
    inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray], path: Path, name: str
) -> StoredTestVector:
    """Write the tensors of one test vector to ``path`` (to become bundle file ``name``); say where each lies."""
    offset = 0
    slices: dict[str, dict[str, TensorSlice]] = {"inputs": {}, "outputs": {}}
    with open(path, "wb") as fh:
        for part, tensors in (("inputs", inputs), ("outputs", outputs)):
            for tensor_name, value in tensors.items():
                array = np.asarray(value, order="C")
                data = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
                slices[part][tensor_name] = TensorSlice(dtype=array.dtype.name, shape=list(array.shape), offset=offset)
                fh.write(data)
                offset += len(data)
    return StoredTestVector(file=name, inputs=slices["inputs"], outputs=slices["outputs"])


MAX_DECLARED_BATCH = 64  # what a verified model declares; a device class's [batching] may only lower it


class Batching(BaseModel):
    """Whether the model's requests may be concatenated along their first axis and run as one batch (like
    Triton's ``max_batch_size``): verified when the bundle is built, never guessed from shapes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_batch_size: int = Field(
        ge=0, le=4096, description="Rows one batch may hold; 0: the model does not batch (each request alone)."
    )
    reason: str = Field(default="", max_length=500, description="What was verified, or why the model does not batch.")


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = 1
    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    version: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
    device_class: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    model_format: Literal["onnx", "tflite"] = Field(default="onnx", description="Format of `model_file`.")
    precision: Literal["fp32", "fp16", "int8"] = Field(
        default="fp32", description="Precision the model was prepared for; engine builders (TensorRT) honour it."
    )
    model_file: str = Field(description="Name of the entry in `files` that the runtime loads.")
    inputs: list[TensorSpec] = Field(min_length=1)
    outputs: list[TensorSpec] = Field(min_length=1)
    files: list[FileEntry] = Field(min_length=1, max_length=MAX_FILES)
    test_vectors: list[TestVector] = Field(default_factory=list, max_length=32)
    stored_test_vectors: list[StoredTestVector] = Field(
        default_factory=list,
        max_length=32,
        description="Test vectors too large to be inline (over INLINE_VECTOR_BYTES), each in a file of the bundle.",
    )
    batching: Batching | None = Field(
        default=None, description="Declared batching; None (a bundle from before it was declared): no batching."
    )
    rtol: float = Field(default=1e-4, ge=0)
    atol: float = Field(default=1e-5, ge=0)
    min_version: str | None = Field(
        default=None,
        max_length=64,
        description="A device running this bundle takes an older version of the same model than this (PEP 440) "
        "only when its signed desired state allows the downgrade explicitly, e.g. after a security fix.",
    )
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    parent: str | None = Field(default=None, pattern=SHA256, description="Digest of the bundle this derives from.")
    metadata: dict[str, str] = Field(default_factory=dict)
    labels: list[str] | None = Field(default=None, description="Class names, in output index order.")
    preprocessing: list[PreprocessingStep] = Field(default_factory=list)
    reference_stats: dict[str, InputStats] = Field(
        default_factory=dict, description="Per input name: its reference distribution, for drift detection."
    )
    reference_confidence: ConfidenceStats | None = Field(
        default=None, description="Reference distribution of a classifier output's confidence, for drift detection."
    )
    recipe: Recipe | None = None
    metrics: dict[str, float] = Field(default_factory=dict, description="Measured at build time: metric, latency...")
    lineage: Lineage | None = None
    privacy: PrivacyReport | None = Field(default=None, description="DP guarantee of a federated model.")
    description: str | None = Field(default=None, max_length=4000, description="What the model does, for apps.")
    output_roles: dict[str, OutputRole] = Field(
        default_factory=dict, description="Per output name: what it holds (logits, embedding, ...)."
    )
    assets: list[Asset] = Field(
        default_factory=list, max_length=32, description="Files of the bundle an app needs beside the model."
    )
    sequence: SequenceSpec | None = Field(
        default=None, description="Stateful streaming: which outputs feed which inputs between a sequence's requests."
    )

    @field_validator("min_version")
    @classmethod
    def _comparable(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                Version(value)
            except InvalidVersion:
                raise ValueError(f"min_version {value!r} is not a PEP 440 version (e.g. 2.1.0)") from None
        return value

    mirrors: list[str] = Field(
        default_factory=list,
        max_length=8,
        description="HTTP(S) URL templates with {sha256} where the files can also be downloaded, e.g. "
        "https://cdn.example.com/edgefleet/{sha256}; signed with the manifest, tried before MQTT chunks, and "
        "what they return must still hash to the manifest's digest.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        names = [f.name for f in self.files]
        if len(set(names)) != len(names):
            raise ValueError("duplicate file names in manifest")
        if self.model_file not in names:
            raise ValueError(f"model_file {self.model_file!r} is not among the files")
        for which, specs in (("input", self.inputs), ("output", self.outputs)):
            if len({s.name for s in specs}) != len(specs):
                raise ValueError(f"duplicate {which} names")
        for url in self.mirrors:
            if not url.startswith(("https://", "http://")) or "{sha256}" not in url or len(url) > 512:
                raise ValueError(f"mirror {url[:80]!r}: use an http(s) URL template containing {{sha256}}")
        input_names = {s.name for s in self.inputs}
        output_names = {s.name for s in self.outputs}
        if self.reference_confidence is not None and self.reference_confidence.output not in output_names:
            raise ValueError(f"reference_confidence names output {self.reference_confidence.output!r}, not the model's")
        every: list[TestVector | StoredTestVector] = [*self.test_vectors, *self.stored_test_vectors]
        for i, vector in enumerate(every):
            if set(vector.inputs) != input_names or not set(vector.outputs) <= output_names:
                raise ValueError(f"test vector {i} does not name the model's inputs and outputs")
        for name in self.output_roles:
            if name not in output_names:
                raise ValueError(f"output_roles names {name!r}, not one of the model's outputs")
        if self.sequence is not None:
            in_specs = {s.name: s for s in self.inputs}
            out_specs = {s.name: s for s in self.outputs}
            for state in self.sequence.states:
                if state.input not in in_specs or state.output not in out_specs:
                    raise ValueError(
                        f"sequence state {state.output!r} -> {state.input!r}: not the model's output/input"
                    )
                if in_specs[state.input].dtype != out_specs[state.output].dtype:
                    raise ValueError(f"sequence state {state.output!r} -> {state.input!r}: dtypes differ")
            if len({s.input for s in self.sequence.states}) != len(self.sequence.states):
                raise ValueError("a sequence state input is fed twice")
        asset_names = [a.name for a in self.assets]
        if len(set(asset_names)) != len(asset_names):
            raise ValueError("duplicate asset names")
        for asset in self.assets:
            if asset.name not in names or asset.name == self.model_file:
                raise ValueError(f"asset {asset.name!r} is not among the files (or is the model)")
        for vector in self.stored_test_vectors:
            if vector.file not in names or vector.file == self.model_file:
                raise ValueError(f"stored test vector file {vector.file!r} is not among the files (or is the model)")
            entry = next(f for f in self.files if f.name == vector.file)
            end = max((t.offset + t.nbytes for t in [*vector.inputs.values(), *vector.outputs.values()]), default=0)
            if end > entry.size:
                raise ValueError(f"stored test vector file {vector.file!r}: tensors end at byte {end}, past its size")
        return self

    def all_test_vectors(
        self, locate: Callable[[FileEntry], Path]
    ) -> list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]:
        """Every test vector as (inputs, outputs) arrays: the inline ones, then those stored as files, read
        from where ``locate`` says each file lies (already hash-checked by the caller)."""
        vectors = [
            ({k: t.to_array() for k, t in v.inputs.items()}, {k: t.to_array() for k, t in v.outputs.items()})
            for v in self.test_vectors
        ]
        for stored in self.stored_test_vectors:
            vectors.append(stored.arrays(locate(self.file(stored.file)).read_bytes()))
        return vectors

    def file(self, name: str) -> FileEntry:
        return next(f for f in self.files if f.name == name)

    def card(self) -> ModelCard:
        """What an app needs to feed the model: the model card served by the agent's ModelInfo."""
        return ModelCard(
            description=self.description,
            labels=self.labels,
            preprocessing=self.preprocessing,
            output_roles=self.output_roles,
            assets=[
                AssetInfo(**a.model_dump(), size=self.file(a.name).size, sha256=self.file(a.name).sha256)
                for a in self.assets
            ],
            sequence=self.sequence,
            metadata=self.metadata,
        )

    def canonical_bytes(self) -> bytes:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":")).encode()


class SignedManifest(BaseModel):
    """The manifest's exact bytes (as text), with who signed them and the ed25519 signature."""

    model_config = ConfigDict(extra="forbid")

    manifest: str = Field(max_length=MAX_MANIFEST_BYTES)
    key_id: str = Field(pattern=r"^[0-9a-f]{16}$")
    signature: str = Field(description="base64 of the ed25519 signature over `manifest` (UTF-8).")

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.manifest.encode()).hexdigest()

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> SignedManifest:
        if len(data) > MAX_MANIFEST_BYTES + 1024:
            raise BundleError(f"signed manifest of {len(data)} bytes exceeds {MAX_MANIFEST_BYTES}")
        try:
            return cls.model_validate_json(data)
        except ValidationError as exc:
            raise BundleError(f"malformed signed manifest: {_first_error(exc)}") from None


def sign_manifest(manifest: Manifest, private_key: Ed25519PrivateKey) -> SignedManifest:
    text = manifest.canonical_bytes()
    return SignedManifest(
        manifest=text.decode(),
        key_id=key_id(private_key.public_key()),
        signature=base64.b64encode(sign_bytes(private_key, text)).decode("ascii"),
    )


def verify_manifest(signed: SignedManifest, trusted: TrustedKeys) -> Manifest:
    """Check the signature against the trusted keys, then parse the manifest it covers."""
    try:
        signature = base64.b64decode(signed.signature, validate=True)
    except ValueError:
        raise BundleError("signature is not valid base64") from None
    verify_bytes(trusted, signed.key_id, signature, signed.manifest.encode())
    try:
        return Manifest.model_validate_json(signed.manifest)
    except ValidationError as exc:
        raise BundleError(f"signed manifest is invalid: {_first_error(exc)}") from None


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def verify_files(manifest: Manifest, locate: Callable[[str, str], Path]) -> None:
    """Check every file's size and sha256; ``locate(name, sha256)`` says where the file lies."""
    for entry in manifest.files:
        path = locate(entry.name, entry.sha256)
        if not path.is_file():
            raise BundleError(f"file {entry.name!r} is missing")
        size = path.stat().st_size
        if size != entry.size:
            raise BundleError(f"file {entry.name!r}: {size} bytes, manifest says {entry.size}")
        actual = sha256_file(path)
        if actual != entry.sha256:
            raise BundleError(
                f"file {entry.name!r}: sha256 {actual[:12]}..., manifest says {entry.sha256[:12]}... (tampered)"
            )


def safe_member_name(name: str) -> str:
    """Reject absolute paths, ``..``, backslashes and empty parts; return the normalised name."""
    if not name or name.startswith("/") or "\\" in name or "\x00" in name:
        raise UnsafeArchive(f"unsafe path {name!r}")
    norm = posixpath.normpath(name)
    if norm != name or norm.startswith("../") or norm == ".." or norm == ".":
        raise UnsafeArchive(f"unsafe path {name!r}")
    return norm


def pack_bundle(signed: SignedManifest, files: dict[str, Path], out: Path) -> Path:
    """Write the archive: the signed manifest and each named file, in manifest order."""
    manifest = Manifest.model_validate_json(signed.manifest)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        _add_bytes(tar, MANIFEST_NAME, signed.to_bytes())
        for entry in manifest.files:
            info = tar.gettarinfo(str(files[entry.name]), arcname=f"files/{entry.name}")
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = 0
            with open(files[entry.name], "rb") as fh:
                tar.addfile(info, fh)
    tmp.replace(out)
    return out


def extract_bundle(archive: Path, dest: Path, *, max_bytes: int = MAX_BUNDLE_BYTES) -> SignedManifest:
    """Extract safely into ``dest`` (regular files only, no escapes, bounded sizes).

    Returns the signed manifest; the caller verifies it and the files.
    """
    dest.mkdir(parents=True, exist_ok=True)
    try:
        tar = tarfile.open(archive, "r:*")  # noqa: SIM115 - opening errors need their own message
    except (tarfile.TarError, OSError) as exc:
        raise UnsafeArchive(f"{archive}: not a readable bundle archive ({exc})") from None
    try:
        with tar:
            signed = _extract_members(tar, dest, max_bytes)
    except (tarfile.TarError, EOFError, zlib.error, FileExistsError) as exc:
        # A truncated or corrupt stream fails while members are read, not when the archive opens.
        raise UnsafeArchive(f"{archive}: damaged or truncated archive ({type(exc).__name__}: {exc})") from None
    if signed is None:
        raise UnsafeArchive(f"{archive}: no {MANIFEST_NAME}")
    return signed


def _extract_members(tar: tarfile.TarFile, dest: Path, max_bytes: int) -> SignedManifest | None:
    total = 0
    signed: SignedManifest | None = None
    listed: dict[str, int] = {}
    seen: set[str] = set()
    for count, member in enumerate(tar, start=1):
        if count > MAX_FILES + 1:
            raise UnsafeArchive(f"archive holds more than {MAX_FILES + 1} members")
        name = safe_member_name(member.name)
        if name in seen:
            raise UnsafeArchive(f"member {name!r} appears twice in the archive")
        seen.add(name)
        if not member.isfile():
            raise UnsafeArchive(f"member {name!r} is not a regular file (links and devices are refused)")
        total += member.size
        if total > max_bytes:
            raise UnsafeArchive(f"archive content exceeds {max_bytes} bytes")
        fh = tar.extractfile(member)
        assert fh is not None  # regular file
        if name == MANIFEST_NAME:
            signed = SignedManifest.from_bytes(fh.read(MAX_MANIFEST_BYTES + 1025))
            listed = _listed_sizes(signed)
            continue
        if not name.startswith("files/"):
            raise UnsafeArchive(f"unexpected member {name!r}")
        # Only what the manifest lists, at the size it declares: nothing else is even written to disk.
        if signed is None:
            raise UnsafeArchive(f"member {name!r} comes before {MANIFEST_NAME} (or the archive has none)")
        declared = listed.get(name[len("files/") :])
        if declared is None:
            raise UnsafeArchive(f"member {name!r} is not listed by the manifest")
        if member.size != declared:
            raise UnsafeArchive(f"member {name!r} is {member.size} bytes, the manifest says {declared}")
        target = dest / name[len("files/") :]
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "xb") as out:
            remaining = member.size
            while remaining > 0:
                block = fh.read(min(remaining, 1 << 20))
                if not block:
                    raise UnsafeArchive(f"member {name!r} is truncated")
                out.write(block)
                remaining -= len(block)
    return signed


def _listed_sizes(signed: SignedManifest) -> dict[str, int]:
    """The files the (not yet verified) manifest lists, by name, with their declared sizes."""
    try:
        manifest = Manifest.model_validate_json(signed.manifest)
    except ValidationError as exc:
        raise UnsafeArchive(f"{MANIFEST_NAME} is not a valid manifest: {_first_error(exc)}") from None
    return {entry.name: entry.size for entry in manifest.files}


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _first_error(exc: ValidationError) -> str:
    return describe_errors(exc)[0]


def is_downgrade(version: str, min_version: str) -> bool:
    """Whether ``version`` is below ``min_version``; a version that does not parse (PEP 440) cannot be shown not
    to be, so it counts as one."""
    try:
        return Version(version) < Version(min_version)
    except InvalidVersion:
        return True
