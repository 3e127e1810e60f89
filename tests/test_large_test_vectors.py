"""Test vectors too large for the signed manifest (a 3x224x224 classifier with 5 rows: 3 MB of input) travel
as files of the bundle, hashed by the manifest: the bundle builds with a small manifest, the agent's
self-test reads them, a changed byte is caught, and a real coordinator and agent deploy it end to end."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edgefleet.agent.errors import ActivationError
from edgefleet.agent.serving.model import load_model
from edgefleet.cli.main import app
from edgefleet.local.fleet import LocalFleet
from edgefleet.protocol.bundle import INLINE_VECTOR_BYTES, Manifest, extract_bundle, verify_files, verify_manifest
from edgefleet.protocol.errors import BundleError
from edgefleet.protocol.signing import load_trusted_keys
from tests.conftest import Keys, build


def _classifier(tmp_path: Path) -> Path:
    """A small CNN over 224x224 RGB images (random weights), batch dimension dynamic."""
    torch = pytest.importorskip("torch", reason="torch (compression extra) not installed")

    torch.manual_seed(11)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 7, stride=4), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        torch.nn.Linear(8, 10),
    )  # fmt: skip
    path = tmp_path / "cnn.onnx"
    torch.onnx.export(
        net.eval(), (torch.zeros(1, 3, 224, 224),), str(path), input_names=["image"], output_names=["logits"],
        dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17, dynamo=False,
    )  # fmt: skip
    return path


def _images(rows: int) -> dict[str, np.ndarray]:
    return {"image": np.random.default_rng(rows).random((rows, 3, 224, 224), dtype=np.float32)}


@pytest.fixture
def big_bundle(tmp_path: Path, keys: Keys) -> tuple[Path, str]:
    return build(_classifier(tmp_path), tmp_path / "cnn.bundle", keys, version="1.0.0",
                 test_inputs=[_images(5), _images(1)])  # fmt: skip


def test_a_bundle_whose_test_vectors_exceed_the_manifest_limit_builds_with_them_as_files(
    tmp_path: Path, keys: Keys, big_bundle: tuple[Path, str]
) -> None:
    archive, digest = big_bundle
    signed = extract_bundle(archive, tmp_path / "x")
    manifest = verify_manifest(signed, load_trusted_keys([keys.public]))
    verify_files(manifest, lambda name, _sha: tmp_path / "x" / name)

    assert len(signed.manifest) < 64 * 1024, "the manifest stays small"
    assert [v.file for v in manifest.stored_test_vectors] == ["test-vector-0.bin", "test-vector-1.bin"]
    assert manifest.test_vectors == []  # 1 row of 224x224x3 floats is 602 KB: over the inline limit too
    assert INLINE_VECTOR_BYTES < 3 * 224 * 224 * 4
    assert manifest.file("test-vector-0.bin").size == 5 * 3 * 224 * 224 * 4 + 5 * 10 * 4
    (inputs, outputs), _ = manifest.all_test_vectors(lambda entry: tmp_path / "x" / entry.name)
    assert np.array_equal(inputs["image"], _images(5)["image"]) and outputs["logits"].shape == (5, 10)

    loaded = load_model(digest, manifest, tmp_path / "x" / manifest.model_file)  # the self-test reads the files
    assert loaded.ref.digest == digest

    inspected = CliRunner().invoke(app, ["bundle", "inspect", str(archive), "--format", "json"])
    assert inspected.exit_code == 0, inspected.output
    assert json.loads(inspected.stdout)["test_vectors"] == 2


def test_a_stored_test_vector_is_checked_by_hash_and_by_the_self_test(
    tmp_path: Path, big_bundle: tuple[Path, str]
) -> None:
    archive, digest = big_bundle
    signed = extract_bundle(archive, tmp_path / "x")
    manifest = Manifest.model_validate_json(signed.manifest)
    vector = tmp_path / "x" / "test-vector-1.bin"
    raw = bytearray(vector.read_bytes())
    raw[-1] ^= 0x40  # one bit of the last expected logit
    vector.write_bytes(bytes(raw))

    with pytest.raises(BundleError, match=r"test-vector-1\.bin.*tampered"):
        verify_files(manifest, lambda name, _sha: tmp_path / "x" / name)
    with pytest.raises(ActivationError, match="test vector 1, output 'logits'"):
        load_model(digest, manifest, tmp_path / "x" / manifest.model_file)


@pytest.mark.slow
def test_a_real_agent_fetches_and_self_tests_a_bundle_with_stored_vectors(
    fleet: LocalFleet, big_bundle: tuple[Path, str]
) -> None:
    archive, digest = big_bundle
    with tarfile.open(archive) as tar:
        assert "files/test-vector-0.bin" in tar.getnames()
    fleet.start_coordinator()
    fleet.add_agent("cam-1")
    fleet.start_agent("cam-1")
    fleet.wait_registered(["cam-1"])

    assert fleet.upload(archive) == digest
    fleet.deploy(digest, ["cam-1"])

    fleet.wait_active(digest, ["cam-1"], timeout=90)
    device = fleet.device("cam-1")
    assert device is not None and device["last_error"] is None
