"""The agent's on-disk model store: content-addressed blobs, signed manifests and the active slot.

Every write is temp file + fsync + atomic rename, so a process killed at any point leaves either
the old or the new state, never a torn one.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TypedDict

from edgefleet.common.files import atomic_write, fsync_dir
from edgefleet.protocol.bundle import Manifest, SignedManifest, sha256_file, verify_files, verify_manifest
from edgefleet.protocol.errors import BundleError
from edgefleet.protocol.signing import TrustedKeys

__all__ = ["ModelStore", "Refusal", "StoreState"]

log = logging.getLogger(__name__)


class Refusal(TypedDict):
    reason: str
    revision: int | None


@dataclass(frozen=True)
class StoreState:
    """The A/B slots and what the agent must remember across restarts, kept in one atomic file."""

    active: str | None = None  # the bundle served now (digest)
    previous: str | None = None  # the one before it, kept ready for a revert
    history: tuple[str, ...] = ()  # activated bundles, newest first (for garbage collection)
    activated_at: float | None = None  # wall-clock time of the last activation
    activated_revision: int | None = None  # the desired-state revision that asked for it
    unclean_starts: tuple[float, ...] = ()  # starts since the last clean stop (crash-loop detection)
    refused: dict[str, Refusal] = field(default_factory=dict)  # bundles refused, by digest

    def to_json(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def from_json(cls, data: bytes) -> StoreState:
        raw = json.loads(data)
        return cls(
            active=raw.get("active"),
            previous=raw.get("previous"),
            history=tuple(raw.get("history", ())),
            activated_at=raw.get("activated_at"),
            activated_revision=raw.get("activated_revision"),
            unclean_starts=tuple(raw.get("unclean_starts", ())),
            refused=dict(raw.get("refused", {})),
        )


class ModelStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs"
        self.manifests = root / "manifests"
        self.partial = root / "partial"
        for folder in (self.blobs, self.manifests, self.partial):
            folder.mkdir(parents=True, exist_ok=True)
        self._state_file = root / "state.json"

    # -- state ---------------------------------------------------------------------------
    def state(self) -> StoreState:
        if not self._state_file.exists():
            return StoreState()
        try:
            return StoreState.from_json(self._state_file.read_bytes())
        except (OSError, ValueError, TypeError) as exc:
            # Only reachable by outside damage: atomic_write never leaves a partial file.
            log.error("model store state %s unreadable (%s); starting with no active model", self._state_file, exc)
            return StoreState()

    def save(self, state: StoreState) -> None:
        atomic_write(self._state_file, state.to_json())

    def activate(self, digest: str, revision: int | None = None) -> StoreState:
        old = self.state()
        history = (digest, *(d for d in old.history if d != digest))
        new = replace(
            old,
            active=digest,
            previous=old.active,
            history=history,
            activated_at=time.time(),
            activated_revision=revision,
            unclean_starts=(),
        )
        self.save(new)
        return new

    def revert(self, reason: str) -> StoreState:
        """Serve the previous bundle again and refuse the active one (until a newer desired revision)."""
        old = self.state()
        if old.active is None or old.previous is None:
            raise BundleError("no previous bundle to revert to")
        refused = old.refused | {old.active: Refusal(reason=reason, revision=old.activated_revision)}
        new = replace(old, active=old.previous, previous=None, unclean_starts=(), refused=refused)
        self.save(new)
        return new

    def refuse(self, digest: str, reason: str, revision: int | None) -> None:
        """Remember that ``digest`` was refused, so the same desired revision is not tried again."""
        old = self.state()
        self.save(replace(old, refused=old.refused | {digest: Refusal(reason=reason, revision=revision)}))

    def record_start(self, window_s: float) -> int:
        """Count this start; return how many starts since the last clean stop fell within ``window_s``."""
        old = self.state()
        now = time.time()
        starts = (*(t for t in old.unclean_starts if now - t <= window_s), now)
        self.save(replace(old, unclean_starts=starts))
        return len(starts)

    def record_clean_stop(self) -> None:
        self.save(replace(self.state(), unclean_starts=()))

    def gc(self, keep: int) -> list[str]:
        """Delete bundles beyond the ``keep`` newest (never the active or previous); return their digests."""
        state = self.state()
        kept = {d for d in (state.active, state.previous) if d} | set(state.history[:keep])
        removed = [p.stem for p in self.manifests.glob("*.json") if p.stem not in kept]
        needed: set[str] = set()
        for digest in kept:
            signed = self.signed_manifest(digest)
            if signed is not None:
                needed |= {f.sha256 for f in Manifest.model_validate_json(signed.manifest).files}
        for digest in removed:
            (self.manifests / f"{digest}.json").unlink(missing_ok=True)
        for blob in self.blobs.iterdir():
            if blob.name not in needed:
                blob.unlink(missing_ok=True)
        if removed:
            self.save(replace(state, history=tuple(d for d in state.history if d in kept)))
        return removed

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
        fsync_dir(self.blobs)
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
