"""Naming a bundle as an operator does: its digest, a unique prefix of it, or MODEL:VERSION.

A digest or prefix names one bundle. MODEL:VERSION (VERSION may be a stage: ``production``,
``staging``) names the version's bundles, one per device class; a device's class picks its one.
The CLI and the API both take these references; the store keeps only full digests.
"""

from __future__ import annotations

import re
from typing import Any

from edgefleet.coordinator.errors import Conflict, NotFound, Rejected
from edgefleet.coordinator.registry.models import ModelRegistry
from edgefleet.coordinator.store import FleetStore

__all__ = ["BUNDLE_REF_PATTERN", "DIGEST_PREFIX_PATTERN", "MIN_PREFIX", "BundleRefs", "parse_ref"]

MIN_PREFIX = 8  # hex digits; tables print 16
DIGEST_PREFIX_PATTERN = rf"^[0-9a-f]{{{MIN_PREFIX},64}}$"
# The manifest's own rules for a name and a version (protocol/bundle.py): neither holds a colon.
_NAME_VERSION = r"([A-Za-z0-9][A-Za-z0-9_.-]{0,127}):([A-Za-z0-9][A-Za-z0-9_.+-]{0,63})"
BUNDLE_REF_PATTERN = rf"^(?:[0-9a-f]{{{MIN_PREFIX},64}}|{_NAME_VERSION})$"

_DIGEST = re.compile(DIGEST_PREFIX_PATTERN)
_MODEL_VERSION = re.compile(rf"^{_NAME_VERSION}$")


def parse_ref(ref: str) -> tuple[str, str] | None:
    """(model, version) of a MODEL:VERSION reference; None for a digest or prefix; Rejected for anything else."""
    match = _MODEL_VERSION.match(ref)
    if match is not None:
        return match.group(1), match.group(2)
    if _DIGEST.match(ref):
        return None
    raise Rejected(
        f"{ref!r} names no bundle: give its digest, its first {MIN_PREFIX} or more hex digits, or MODEL:VERSION"
    )


class BundleRefs:
    """Resolves references against the registry's bundles."""

    def __init__(self, db: FleetStore, models: ModelRegistry) -> None:
        self.db = db
        self.models = models

    def bundles(self, ref: str) -> list[dict[str, Any]]:
        """Every bundle ``ref`` names: one for a digest or prefix, one per device class for MODEL:VERSION.

        NotFound when it names none; Conflict when a prefix starts several digests."""
        parsed = parse_ref(ref)
        if parsed is not None:
            name, version = parsed
            version = self.models.resolve(name, version)
            found = [b for b in self.db.bundles() if b["name"] == name and b["version"] == version]
            if not found:
                raise NotFound(f"no bundle of {name}:{version} in the registry")
            return sorted(found, key=lambda b: str(b["device_class"]))
        exact = self.db.bundle(ref) if len(ref) == 64 else None
        if exact is not None:
            return [exact]
        matches = [b for b in self.db.bundles() if b["digest"].startswith(ref)]
        if len(matches) > 1:
            shown = ", ".join(f"{b['digest'][:16]} ({b['name']}:{b['version']})" for b in matches[:5])
            raise Conflict(f"{ref} is the start of {len(matches)} bundle digests ({shown}); give more of it")
        if not matches:
            raise NotFound(f"no bundle {ref}")
        return matches

    def one(self, ref: str, device_class: str | None = None) -> dict[str, Any]:
        """The one bundle ``ref`` names (for ``device_class``, if given)."""
        found = self.bundles(ref)
        if device_class is not None:
            mine = [b for b in found if b["device_class"] == device_class]
            if not mine:
                raise Conflict(f"{ref} has no bundle for device class {device_class!r} (it has: {_classes(found)})")
            found = mine
        if len(found) > 1:
            raise Conflict(
                f"{ref} names {len(found)} bundles, one per device class ({_classes(found)}): "
                "give the device class, or the digest of one"
            )
        return found[0]

    def plan(self, ref: str, device_ids: list[str] | None) -> dict[str, list[str]]:
        """Which bundle ``ref`` gives to which device, as {digest: [device ids]}: each named device gets
        the bundle of its class; with no devices named, every device of each bundle's class gets it."""
        found = self.bundles(ref)
        by_class = {str(b["device_class"]): str(b["digest"]) for b in found}
        if device_ids is None:
            plan = {
                digest: [str(d["device_id"]) for d in self.db.devices(device_class=device_class)]
                for device_class, digest in by_class.items()
            }
            plan = {digest: ids for digest, ids in plan.items() if ids}
            if not plan:
                raise Conflict(f"no known device of class {_classes(found)}")
            return plan
        if len(found) == 1:  # a digest: the deployment itself checks each device against its class
            return {str(found[0]["digest"]): list(device_ids)}
        plan = {}
        for device_id in device_ids:
            device = self.db.device(device_id)
            if device is None:
                raise NotFound(f"no device {device_id!r}")
            digest = by_class.get(str(device.get("device_class")))
            if digest is None:
                raise Conflict(
                    f"device {device_id!r} is {device.get('device_class')!r}; {ref} has bundles for {_classes(found)}"
                )
            plan.setdefault(digest, []).append(device_id)
        return plan


def _classes(bundles: list[dict[str, Any]]) -> str:
    return ", ".join(sorted({str(b["device_class"]) for b in bundles}))
