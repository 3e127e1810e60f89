"""TFLite export through a separate environment: a bad one is reported, a real one converts.

The real export needs the environment that scripts/make_tflite_env.sh creates, named by
EDGEFLEET_TFLITE_PYTHON; without it that test skips (CI has none).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

from edgefleet.agent.serving.model import load_model
from edgefleet.cli.compress import compress_command
from edgefleet.compression import BuildOptions, CompressionReport, EvalOptions, compress
from edgefleet.compression.bundles import BundleSpec, write_bundle
from edgefleet.compression.candidates.tflite_export import TfliteEnvError, probe_env
from edgefleet.compression.metrics import get_metric
from edgefleet.compression.source import ReferenceModel
from edgefleet.local.digits import DigitsData, load_digits_data, train_digits_cnn, train_digits_mlp
from edgefleet.protocol.bundle import extract_bundle, verify_manifest
from edgefleet.protocol.signing import generate_keypair, load_private_key, load_trusted_keys
from edgefleet.protocol.tensors import TensorSpec

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py

FAST = EvalOptions(memory="off", latency_runs=10, latency_budget_s=0.1)
EXPORT_PYTHON = os.environ.get("EDGEFLEET_TFLITE_PYTHON")


@pytest.fixture(scope="module")
def data() -> DigitsData:
    return load_digits_data()


def _rows(d: DigitsData, n: int = 60) -> dict[str, np.ndarray]:
    return {"x": d.x_test[:n], "y": d.y_test[:n]}


def _run(model: torch.nn.Module, d: DigitsData, out: Path, tflite_python: str) -> CompressionReport:
    return compress(
        model,
        _rows(d),
        metric="accuracy",
        out_dir=out,
        name="digits",
        version="1.0.0",
        device_classes=["x86-gateway"],
        techniques=["fp32", "int8-dynamic", "tflite"],
        build=BuildOptions(tflite_python=tflite_python),
        evaluation=FAST,
    )


# -- an unusable environment -------------------------------------------------------------
@pytest.mark.parametrize(
    ("python", "reason"),
    [
        ("/bin/false", "exit 1: no output"),
        ("/nonexistent/bin/python", "no such executable"),
        (sys.executable, "litert-torch is not installed there"),
    ],
)
def test_an_unusable_export_env_is_named_with_the_reason(python: str, reason: str) -> None:
    with pytest.raises(TfliteEnvError) as caught:
        probe_env(python)
    assert str(caught.value) == f"tflite export env {python} failed: {caught.value.detail}"
    assert reason in caught.value.detail


def test_a_bad_export_env_leaves_tflite_not_built_and_the_run_completes(tmp_path: Path, data: DigitsData) -> None:
    mlp, _ = train_digits_mlp(data, hidden=16, epochs=3)

    report = _run(mlp, data, tmp_path, "/bin/false")

    status = {c.name: (c.status, c.reason) for c in report.candidates}
    for name in ("tflite-fp32", "tflite-int8"):
        assert status[name] == ("not built", "tflite export env /bin/false failed: exit 1: no output")
    assert report.candidate("int8-dynamic").usable and report.selections[0].chosen is not None
    assert (tmp_path / "report.json").is_file()


def _cli() -> typer.Typer:
    app = typer.Typer()
    app.command("compress")(compress_command)
    app.command("noop", hidden=True)(lambda: None)
    return app


def test_the_cli_takes_the_export_env_from_the_environment(tmp_path: Path, data: DigitsData) -> None:
    npz = tmp_path / "val.npz"
    rows = _rows(data, 40)
    np.savez(npz, x=rows["x"], y=rows["y"])
    args = ["compress", "tests.models:digits_student", "--data", str(npz), "--metric", "accuracy"]
    args += ["--name", "digits", "--version", "1.0.0", "--out", str(tmp_path / "out"), "--memory", "off"]
    args += ["--techniques", "fp32,tflite", "--device-class", "x86-gateway", "--allow-unmet", "--format", "json"]

    result = CliRunner().invoke(_cli(), args, env={"EDGEFLEET_TFLITE_PYTHON": sys.executable})

    assert result.exit_code == 0, result.output
    candidates = {c["name"]: c for c in json.loads(result.stdout)["candidates"]}
    assert candidates["fp32"]["status"] == "built"
    assert candidates["tflite-fp32"]["status"] == "not built"
    assert "litert-torch is not installed there" in candidates["tflite-fp32"]["reason"]


# -- the real export ---------------------------------------------------------------------
@pytest.mark.skipif(
    EXPORT_PYTHON is None,
    reason="no TFLite export environment: set EDGEFLEET_TFLITE_PYTHON (scripts/make_tflite_env.sh makes one)",
)
def test_the_export_env_converts_a_cnn_that_litert_runs_like_pytorch(tmp_path: Path, data: DigitsData) -> None:
    assert EXPORT_PYTHON is not None
    cnn, _ = train_digits_cnn(data, channels=8, epochs=3)
    with torch.no_grad():
        expected = cnn(torch.from_numpy(data.x_test[:8])).numpy()

    report = _run(cnn, data, tmp_path / "run", EXPORT_PYTHON)

    fp32, int8 = report.candidate("tflite-fp32"), report.candidate("tflite-int8")
    assert fp32.usable and int8.usable, {c.name: c.reason or c.eval_error for c in report.candidates}
    # litert-torch fixes the batch at 1; the agent's LiteRT runtime serves it row by row at any batch.
    assert fp32.measured is not None and fp32.measured.runtime == "litert" and fp32.measured.batch_n == 32
    assert fp32.measured.drop == 0 and fp32.measured.cosine_to_reference > 0.99999
    assert int8.measured is not None and int8.measured.drop < 0.05
    assert int8.measured.size_mb < 0.5 * fp32.measured.size_mb
    assert fp32.params["export_env"] == EXPORT_PYTHON and "litert-torch" in (fp32.tool or "")

    # The bundle's self-test runs the fixed-batch model one row at a time, and the agent loads it.
    private_pem, public_pem = generate_keypair()
    (tmp_path / "k.key").write_bytes(private_pem)
    (tmp_path / "k.pub").write_bytes(public_pem)
    input_spec = TensorSpec(name="input", dtype="float32", shape=[None, 64])
    reference = ReferenceModel(tmp_path / "unused.onnx", None, [input_spec], [], report.reference["digest"], "test")
    key = load_private_key(tmp_path / "k.key")
    spec = BundleSpec("digits", "1.0.0", key, reference, get_metric("accuracy"), {"input": data.x_test[:5]}, {})
    archive, digest, _ = write_bundle(fp32, "rpi4", tmp_path / "digits.bundle", spec, 1.0)
    manifest = verify_manifest(extract_bundle(archive, tmp_path / "x"), load_trusted_keys([tmp_path / "k.pub"]))
    loaded = load_model(digest, manifest, tmp_path / "x" / manifest.model_file, chain=["litert"])
    for i in range(len(expected)):
        got = next(iter(loaded.predict({"args_0": data.x_test[i : i + 1]}).values()))
        np.testing.assert_allclose(got, expected[i : i + 1], rtol=1e-4, atol=1e-4)
