"""The bundle format: signing, verification and safe extraction, on real archives."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from edgefleet.protocol.bundle import (
    MANIFEST_NAME,
    Manifest,
    SignedManifest,
    extract_bundle,
    verify_files,
    verify_manifest,
)
from edgefleet.protocol.errors import BundleError, SignatureError, UnsafeArchive
from edgefleet.protocol.signing import load_trusted_keys
from tests.conftest import DigitsModels, Keys, build


@pytest.fixture
def bundle(tmp_path: Path, keys: Keys, digits: DigitsModels) -> tuple[Path, str]:
    return build(digits.v1, tmp_path / "v1.bundle", keys, version="1.0.0")


def _open(archive: Path, dest: Path, keys: Keys) -> Manifest:
    signed = extract_bundle(archive, dest)
    manifest = verify_manifest(signed, load_trusted_keys([keys.public]))
    verify_files(manifest, lambda name, _sha: dest / name)
    return manifest


def test_a_built_bundle_verifies_and_describes_the_model(tmp_path: Path, bundle: tuple[Path, str], keys: Keys) -> None:
    manifest = _open(bundle[0], tmp_path / "out", keys)
    assert manifest.name == "digits" and manifest.version == "1.0.0"
    assert [(s.name, s.dtype, s.shape) for s in manifest.inputs] == [("pixels", "float32", [None, 64])]
    assert [(s.name, s.shape) for s in manifest.outputs] == [("logits", [None, 10])]
    assert manifest.test_vectors, "test vectors are computed at build time"
    assert (
        SignedManifest.model_validate_json(extract_bundle(bundle[0], tmp_path / "again").to_bytes()).digest == bundle[1]
    )


def test_one_flipped_byte_in_the_model_is_detected(tmp_path: Path, bundle: tuple[Path, str], keys: Keys) -> None:
    dest = tmp_path / "out"
    signed = extract_bundle(bundle[0], dest)
    model = dest / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x01
    model.write_bytes(bytes(data))
    manifest = verify_manifest(signed, load_trusted_keys([keys.public]))
    with pytest.raises(BundleError, match="tampered"):
        verify_files(manifest, lambda name, _sha: dest / name)


def test_a_manifest_signed_by_an_untrusted_key_is_refused(
    tmp_path: Path, digits: DigitsModels, keys: Keys, other_keys: Keys
) -> None:
    archive, _ = build(digits.v1, tmp_path / "other.bundle", other_keys, version="1.0.0")
    with pytest.raises(SignatureError, match="not trusted"):
        _open(archive, tmp_path / "out", keys)


def test_an_edited_manifest_breaks_the_signature(tmp_path: Path, bundle: tuple[Path, str], keys: Keys) -> None:
    signed = extract_bundle(bundle[0], tmp_path / "out")
    forged = signed.model_copy(update={"manifest": signed.manifest.replace('"1.0.0"', '"9.9.9"')})
    with pytest.raises(SignatureError, match="invalid signature"):
        verify_manifest(forged, load_trusted_keys([keys.public]))


def _archive(path: Path, members: list[tarfile.TarInfo], payloads: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tar:
        for info in members:
            data = payloads.get(info.name)
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _file(name: str) -> tarfile.TarInfo:
    return tarfile.TarInfo(name)


@pytest.mark.parametrize(
    ("member", "reason"),
    [
        ("../evil", "unsafe path"),
        ("files/../../evil", "unsafe path"),
        ("/etc/passwd", "unsafe path"),
        ("files/./x", "unsafe path"),
        ("other/x", "unexpected member"),
    ],
)
def test_extraction_refuses_paths_that_escape(tmp_path: Path, member: str, reason: str) -> None:
    archive = _archive(tmp_path / "bad.tar", [_file(member)], {member: b"x"})
    with pytest.raises(UnsafeArchive, match=reason):
        extract_bundle(archive, tmp_path / "out")
    assert not (tmp_path / "evil").exists()


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.DIRTYPE, tarfile.FIFOTYPE])
def test_extraction_refuses_links_and_special_files(tmp_path: Path, kind: bytes) -> None:
    info = tarfile.TarInfo("files/model.onnx")
    info.type = kind
    info.linkname = "/etc/passwd"
    archive = _archive(tmp_path / "link.tar", [info], {})
    with pytest.raises(UnsafeArchive, match="not a regular file"):
        extract_bundle(archive, tmp_path / "out")


def test_extraction_enforces_the_size_limit(tmp_path: Path) -> None:
    archive = _archive(tmp_path / "big.tar", [_file("files/a")], {"files/a": b"x" * 2048})
    with pytest.raises(UnsafeArchive, match="exceeds"):
        extract_bundle(archive, tmp_path / "out", max_bytes=1024)


def test_an_archive_without_manifest_or_not_a_tar_is_refused(tmp_path: Path) -> None:
    archive = _archive(tmp_path / "nomanifest.tar", [_file("files/a")], {"files/a": b"x"})
    with pytest.raises(UnsafeArchive, match=MANIFEST_NAME):
        extract_bundle(archive, tmp_path / "out")
    junk = tmp_path / "junk.bundle"
    junk.write_bytes(b"this is not a tar archive" * 40)
    with pytest.raises(UnsafeArchive, match="not a readable bundle"):
        extract_bundle(junk, tmp_path / "out2")


def test_manifest_rejects_inconsistent_content() -> None:
    base = {
        "name": "m",
        "version": "1",
        "device_class": "x",
        "model_file": "model.onnx",
        "inputs": [{"name": "a", "dtype": "float32", "shape": [1]}],
        "outputs": [{"name": "b", "dtype": "float32", "shape": [1]}],
        "files": [{"name": "model.onnx", "sha256": "a" * 64, "size": 1}],
    }
    Manifest.model_validate(base)
    with pytest.raises(ValueError, match="model_file"):
        Manifest.model_validate(base | {"model_file": "other.onnx"})
    with pytest.raises(ValueError, match="unsafe path"):
        Manifest.model_validate(base | {"files": [{"name": "../x", "sha256": "a" * 64, "size": 1}]})
    with pytest.raises(ValueError, match="extra"):
        Manifest.model_validate(base | {"unknown": 1})


def _damaged(bundle: Path, out: Path, how: str) -> Path:
    """A copy of a real bundle, truncated mid-stream or with one of its members twice."""
    if how == "truncated":
        data = bundle.read_bytes()
        out.write_bytes(data[: len(data) * 2 // 3])
        return out
    with tarfile.open(bundle, "r:*") as src, tarfile.open(out, "w:gz") as dst:
        members = [(m, src.extractfile(m).read()) for m in src if m.isfile()]  # type: ignore[union-attr]
        for info, data in [*members, members[-1]]:
            dst.addfile(info, io.BytesIO(data))
    return out


@pytest.mark.parametrize("how", ["truncated", "duplicate member"])
def test_a_damaged_archive_is_an_invalid_bundle_everywhere(
    tmp_path: Path, bundle: tuple[Path, str], keys: Keys, how: str
) -> None:
    """The library refuses it as UnsafeArchive, `bundle verify` exits 4 without a traceback, upload answers 422."""
    import subprocess
    import sys

    from fastapi.testclient import TestClient

    from edgefleet.common.mqtt import BrokerConfig
    from edgefleet.coordinator.api.app import create_app
    from edgefleet.coordinator.config import CoordinatorConfig
    from edgefleet.coordinator.service import Coordinator

    damaged = _damaged(bundle[0], tmp_path / "damaged.bundle", how)
    with pytest.raises(UnsafeArchive, match=r"damaged or truncated|appears twice"):
        _open(damaged, tmp_path / "x", keys)

    verify = subprocess.run(
        [sys.executable, "-m", "edgefleet", "bundle", "verify", str(damaged), "--trusted-key", str(keys.public)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert verify.returncode == 4, verify.stdout + verify.stderr
    assert "Traceback" not in verify.stderr and ("truncated" in verify.stderr or "appears twice" in verify.stderr)

    config = CoordinatorConfig(data_dir=tmp_path / "c", trusted_keys=[keys.public], broker=BrokerConfig())
    http = TestClient(create_app(Coordinator(config), token=None))  # no lifespan: the MQTT link is not started
    response = http.post("/api/v1/bundles", content=damaged.read_bytes())
    assert response.status_code == 422, response.text
    assert http.get("/api/v1/bundles").json() == []


@pytest.mark.parametrize("how", ["unlisted file", "wrong size"])
def test_only_files_the_manifest_lists_at_their_declared_size_are_extracted(
    tmp_path: Path, bundle: tuple[Path, str], how: str
) -> None:
    with tarfile.open(bundle[0], "r:*") as src:
        members = [(m, src.extractfile(m).read()) for m in src if m.isfile()]  # type: ignore[union-attr]
    forged = tmp_path / "forged.bundle"
    with tarfile.open(forged, "w:gz") as dst:
        for info, data in members:
            if how == "wrong size" and info.name.startswith("files/"):
                data = data + b"\0" * 1024  # a longer file under a listed name
                info.size = len(data)
            dst.addfile(info, io.BytesIO(data))
        if how == "unlisted file":
            extra = tarfile.TarInfo("files/extra.bin")
            extra.size = 1 << 20  # a megabyte of zeros compresses to almost nothing
            dst.addfile(extra, io.BytesIO(b"\0" * extra.size))
    out = tmp_path / "out"
    with pytest.raises(UnsafeArchive, match=r"not listed by the manifest|the manifest says"):
        extract_bundle(forged, out)
    assert not (out / "extra.bin").exists()
