"""A bundle named on the command line as MODEL:VERSION, by its digest or by a unique prefix of it, against a real
coordinator: deploy, rollouts, the registry and `coordinator bundle`; an unknown one is exit 5, an ambiguous one 2."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
import tarfile
from pathlib import Path

from edgefleet.common.exit_codes import ExitCode
from edgefleet.local.fleet import LocalFleet
from edgefleet.protocol.bundle import Manifest, SignedManifest, extract_bundle, pack_bundle
from edgefleet.protocol.signing import key_id, sign_bytes
from tests.conftest import DigitsModels, Keys, build


def _edgefleet(fleet: LocalFleet, *args: str) -> subprocess.CompletedProcess[str]:
    token = ["--url", f"http://127.0.0.1:{fleet.api_port}", "--token", fleet.token]
    return subprocess.run(
        [sys.executable, "-m", "edgefleet", *args, *token], capture_output=True, text=True, timeout=120
    )


def _json(fleet: LocalFleet, *args: str):  # type: ignore[no-untyped-def]
    done = _edgefleet(fleet, *args, "--format", "json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _error(done: subprocess.CompletedProcess[str]) -> str:
    return str(json.loads(done.stderr)["error"])


def _twins(bundle: Path, keys: Keys, out: Path) -> tuple[Path, Path, str]:
    """Two real, signed bundles of the same files whose digests share their first 8 hex digits (a birthday
    search over the version's build metadata, ~80k sha256 of the manifest text), and that shared prefix."""
    work = out / "unpacked"
    signed = extract_bundle(bundle, work)
    fields = json.loads(signed.manifest)
    fields["version"] = "2.0.0+nQQNONCEQQ"  # a placeholder the version's pattern allows
    head, tail = Manifest.model_validate(fields).canonical_bytes().split(b"QQNONCEQQ")
    started = hashlib.sha256(head)
    seen: dict[str, int] = {}
    nonce = 0
    while True:
        nonce += 1
        h = started.copy()
        h.update(b"%d" % nonce + tail)
        prefix = h.hexdigest()[:8]
        if prefix in seen:
            break
        seen[prefix] = nonce
    private = keys.private_key()
    paths = []
    for n in (seen[prefix], nonce):
        text = head + b"%d" % n + tail
        twin = SignedManifest(
            manifest=text.decode(),
            key_id=key_id(private.public_key()),
            signature=base64.b64encode(sign_bytes(private, text)).decode(),
        )
        assert twin.digest.startswith(prefix)
        files = {entry.name: work / entry.name for entry in Manifest.model_validate_json(twin.manifest).files}
        paths.append(pack_bundle(twin, files, out / f"twin-{n}.bundle"))
    assert all(tarfile.is_tarfile(p) for p in paths)
    return paths[0], paths[1], prefix


def test_deploy_and_rollouts_take_model_version_and_each_device_gets_its_class_bundle(
    tmp_path: Path, fleet: LocalFleet, keys: Keys, digits: DigitsModels
) -> None:
    # Prepare: one x86 gateway online; digits 1.0.0 built for two classes, 2.0.0 for x86 and 3.0.0 for rpi4 only.
    fleet.start_coordinator()
    fleet.add_agent("gw-1", "x86-gateway")
    fleet.start_agents(["gw-1"])
    fleet.wait_registered(["gw-1"])
    x86, x86_digest = build(digits.v1, tmp_path / "x86.bundle", keys, version="1.0.0")
    rpi, rpi_digest = build(digits.v1, tmp_path / "rpi.bundle", keys, version="1.0.0", device_class="rpi4")
    v2, v2_digest = build(digits.v2, tmp_path / "v2.bundle", keys, version="2.0.0")
    v3, _ = build(digits.v2, tmp_path / "v3.bundle", keys, version="3.0.0", device_class="rpi4")
    for bundle in (x86, rpi, v2, v3):
        assert _edgefleet(fleet, "coordinator", "upload", str(bundle)).returncode == 0

    # Execute + Assert: MODEL:VERSION with no device named deploys each class's bundle to that class's devices.
    deployed = _json(fleet, "coordinator", "deploy", "digits:1.0.0")
    assert [(d["device_id"], d["bundle_digest"]) for d in deployed] == [("gw-1", x86_digest)]
    fleet.wait_active(x86_digest, ["gw-1"])
    named = _json(fleet, "coordinator", "deploy", "digits:1.0.0", "--device", "gw-1")
    assert named[0]["bundle_digest"] == x86_digest

    # A version without a bundle for the device's class is refused (409 -> 2); an unknown one is not found.
    no_class = _edgefleet(fleet, "coordinator", "deploy", "digits:3.0.0", "--device", "gw-1", "--format", "json")
    assert no_class.returncode == ExitCode.USAGE and "rpi4" in _error(no_class), no_class.stderr
    unknown = _edgefleet(fleet, "coordinator", "deploy", "digits:9.9.9", "--format", "json")
    assert unknown.returncode == ExitCode.NOT_FOUND and "digits:9.9.9" in _error(unknown)

    # `coordinator bundle` needs the class when MODEL:VERSION has several bundles.
    several = _edgefleet(fleet, "coordinator", "bundle", "digits:1.0.0", "--format", "json")
    assert several.returncode == ExitCode.USAGE and "one per device class" in _error(several)
    shown = _json(fleet, "coordinator", "bundle", "digits:1.0.0", "--device-class", "rpi4")
    assert shown["digest"] == rpi_digest and shown["manifest"]["device_class"] == "rpi4"
    assert _json(fleet, "coordinator", "bundle", rpi_digest[:16])["digest"] == rpi_digest

    # A rollout named by the 16 characters a table prints rolls out that bundle's version to its class.
    rollout = _json(fleet, "rollout", "create", v2_digest[:16], "--waves", "100%", "--soak", "0", "--wait")
    assert (rollout["model"], rollout["version"], rollout["status"]) == ("digits", "2.0.0", "completed"), rollout
    fleet.wait_active(v2_digest, ["gw-1"])
    wrong_class = _edgefleet(fleet, "rollout", "create", v2_digest[:16], "--target", "class=rpi4")
    assert wrong_class.returncode == ExitCode.USAGE and "x86-gateway" in wrong_class.stderr
    missing = _edgefleet(fleet, "rollout", "create", "0123456789abcdef")
    assert missing.returncode == ExitCode.NOT_FOUND


def test_an_ambiguous_digest_prefix_is_exit_2_wherever_a_bundle_is_named(
    tmp_path: Path, fleet: LocalFleet, keys: Keys, digits: DigitsModels
) -> None:
    # Prepare: two bundles whose digests start with the same 8 hex digits.
    fleet.start_coordinator()
    bundle, _ = build(digits.v1, tmp_path / "v1.bundle", keys, version="1.0.0")
    first, second, prefix = _twins(bundle, keys, tmp_path)
    digests = [_json(fleet, "coordinator", "upload", str(p))["digest"] for p in (first, second)]
    assert digests[0] != digests[1] and all(d.startswith(prefix) for d in digests)

    # Execute + Assert: every command that takes a bundle refuses the shared prefix, naming both.
    for command in (["coordinator", "deploy"], ["coordinator", "bundle"], ["rollout", "create"],
                    ["registry", "promote"]):  # fmt: skip
        done = _edgefleet(fleet, *command, prefix, "--format", "json")
        assert done.returncode == ExitCode.USAGE, (command, done.stderr)
        assert "is the start of 2 bundle digests" in _error(done) and digests[0][:16] in _error(done)
    # One digit more than they share tells them apart.
    unique = next(n for n in range(9, 65) if digests[0][:n] != digests[1][:n])
    promoted = _json(fleet, "registry", "promote", digests[1][:unique])
    version = next(v for v in promoted["versions"] if v["bundles"][0]["digest"] == digests[1])
    assert promoted["production"] == version["version"] and version["stage"] == "production"
