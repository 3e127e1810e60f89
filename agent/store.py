"""The agent's on-disk model store: content-addressed blobs, signed manifests and the active slot.

Every write is temp file + fsync + atomic rename, so a process killed at any point leaves either
the old or the new state, never a torn one.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from protocol.bundle import Manifest, SignedManifest, sha256_file, verify_files, verify_manifest
from protocol.errors import BundleError
from protocol.signing import TrustedKeys

__all__ = ["ModelStore", "Slots", "atomic_write"]

log = logging.getLogger(__name__)


def atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Slots:
    """The A/B slots: the bundle served now and the one before it (digests)."""

    active: str | None = None
    previous: str | None = None


class ModelStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs"
        self.manifests = root / "manifests"
        self.partial = root / "partial"
        for folder in (self.blobs, self.manifests, self.partial):
            folder.mkdir(parents=True, exist_ok=True)
        self._state = root / "state.json"

    # -- slots ---------------------------------------------------------------------------
    def slots(self) -> Slots:
        if not self._state.exists():
            return Slots()
        try:
            raw = json.loads(self._state.read_text())
            return Slots(active=raw.get("active"), previous=raw.get("previous"))
        except (OSError, ValueError) as exc:
            # Only reachable by outside damage: atomic_write never leaves a partial file.
            log.error("model store state %s unreadable (%s); starting with no active model", self._state, exc)
            return Slots()

    def set_slots(self, slots: Slots) -> None:
        atomic_write(self._state, json.dumps({"active": slots.active, "previous": slots.previous}).encode())

    # -- manifests and blobs -------------------------------------------------------------
    def blob_path(self, sha256: str) -> Path:
        return self.blobs / sha256

    def has_blob(self, sha256: str) -> bool:
        return self.blob_path(sha256).is_file()

    def partial_path(self, kind: str, digest: str) -> Path:
        return self.partial / f"{kind}-{digest}.part"

    def commit_blob(self, partial: Path, sha256: str) -> Path:
        """Move a completed download into the blob store after checking its hash."""
        actual = sha256_file(partial)
        if actual != sha256:
            partial.unlink(missing_ok=True)
            raise BundleError(f"downloaded file hashes to {actual[:12]}..., expected {sha256[:12]}... (tampered)")
        with open(partial, "rb") as fh:
            os.fsync(fh.fileno())
        target = self.blob_path(sha256)
        os.replace(partial, target)
        _fsync_dir(self.blobs)
        return target

    def put_manifest(self, signed: SignedManifest) -> None:
        atomic_write(self.manifests / f"{signed.digest}.json", signed.to_bytes())

    def signed_manifest(self, digest: str) -> SignedManifest | None:
        path = self.manifests / f"{digest}.json"
        if not path.is_file():
            return None
        return SignedManifest.from_bytes(path.read_bytes())

    def verified_bundle(self, digest: str, trusted: TrustedKeys) -> Manifest:
        """Re-check signature and every file of a stored bundle; raise BundleError otherwise."""
        signed = self.signed_manifest(digest)
        if signed is None:
            raise BundleError(f"bundle {digest[:12]} is not in the store")
        if signed.digest != digest:
            raise BundleError(f"stored manifest {digest[:12]} does not hash to its name")
        manifest = verify_manifest(signed, trusted)
        verify_files(manifest, lambda _name, sha: self.blob_path(sha))
        return manifest

    def model_path(self, manifest: Manifest) -> Path:
        return self.blob_path(manifest.file(manifest.model_file).sha256)
