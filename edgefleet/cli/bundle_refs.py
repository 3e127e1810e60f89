"""A bundle named on the command line (digest, unique prefix, MODEL:VERSION), resolved by the coordinator."""

from __future__ import annotations

from typing import Any, NamedTuple

from edgefleet.cli.rest import call, segment

__all__ = ["REF_HELP", "ModelVersion", "model_version"]

REF_HELP = (
    "The bundle: MODEL:VERSION (VERSION may be production or staging), its digest, or a unique prefix of the "
    "digest (the 16 characters tables print)."
)


class ModelVersion(NamedTuple):
    model: str
    version: str
    bundle: dict[str, Any] | None  # the one bundle a digest or prefix named; None for MODEL:VERSION


def model_version(ref: str, url: str, token: str | None) -> ModelVersion:
    """The model and version ``ref`` names; a digest or prefix is looked up (unknown: exit 5, ambiguous: 2)."""
    name, sep, version = ref.partition(":")
    if sep:
        return ModelVersion(name, version, None)
    bundle = call("GET", url, token, f"/api/v1/bundles/{segment(ref)}")
    return ModelVersion(str(bundle["name"]), str(bundle["version"]), bundle)
