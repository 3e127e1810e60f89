"""The model registry: accepts signed bundle archives, verifies them, keeps their files by sha256."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

from edgefleet.coordinator.errors import NotFound, Rejected
from edgefleet.coordinator.store import FleetStore
from edgefleet.protocol.bundle import Manifest, SignedManifest, extract_bundle, verify_files, verify_manifest
from edgefleet.protocol.errors import BundleError
from edgefleet.protocol.signing import TrustedKeys

__all__ = ["Registry"]

log = logging.getLogger(__name__)


class Registry:
    def __init__(self, root: Path, db: FleetStore, trusted: TrustedKeys) -> None:
        self.blobs = root / "blobs"
        self.manifests = root / "manifests"
        self.incoming = root / "incoming"
        for folder in (self.blobs, self.manifests, self.incoming):
            folder.mkdir(parents=True, exist_ok=True)
        self.db = db
        self.trusted = trusted

    def add_archive(self, archive: Path) -> tuple[str, Manifest]:
        """Verify an uploaded archive (layout, signature, hashes) and keep it; return (digest, manifest)."""
        with tempfile.TemporaryDirectory(dir=self.incoming) as tmp:
            work = Path(tmp)
            try:
                signed = extract_bundle(archive, work)
                manifest = verify_manifest(signed, self.trusted)
                verify_files(manifest, lambda name, _sha: work / name)
            except BundleError as exc:
                raise Rejected(f"bundle refused: {exc.reason}") from None
            for entry in manifest.files:
                target = self.blobs / entry.sha256
                if not target.exists():
                    os.replace(work / entry.name, target)
            (self.manifests / f"{signed.digest}.json").write_bytes(signed.to_bytes())
        self.db.add_bundle(
            {
                "digest": signed.digest,
                "name": manifest.name,
                "version": manifest.version,
                "device_class": manifest.device_class,
                "model_format": manifest.model_format,
                "key_id": signed.key_id,
                "size": sum(f.size for f in manifest.files),
                "created_at": manifest.created_at.isoformat(),
                "parent": manifest.parent,
                "manifest": signed.manifest,
            }
        )
        log.info(
            "registered bundle %s %s for %s (%s)",
            manifest.name,
            manifest.version,
            manifest.device_class,
            signed.digest[:12],
        )
        return signed.digest, manifest

    def add_upload(self, data: bytes) -> tuple[str, Manifest]:
        with tempfile.NamedTemporaryFile(dir=self.incoming, suffix=".bundle") as fh:
            fh.write(data)
            fh.flush()
            return self.add_archive(Path(fh.name))

    def signed_manifest(self, digest: str) -> SignedManifest:
        path = self.manifests / f"{digest}.json"
        if not path.is_file():
            raise NotFound(f"no bundle {digest}")
        return SignedManifest.from_bytes(path.read_bytes())

    def artifact_path(self, kind: str, digest: str) -> Path:
        """Where the bytes served for a chunk request lie."""
        path = self.manifests / f"{digest}.json" if kind == "manifest" else self.blobs / digest
        if not path.is_file():
            raise NotFound(f"no {kind} {digest}")
        return path

    def read_range(self, kind: str, digest: str, offset: int, length: int) -> tuple[int, bytes]:
        path = self.artifact_path(kind, digest)
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            fh.seek(min(offset, size))
            return size, fh.read(length)
