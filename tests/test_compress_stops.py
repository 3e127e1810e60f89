"""A run that stops still writes report.json and report.md, with what was measured and why it stopped,
and `edgefleet compress` exits with the documented code and a one-line reason, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from edgefleet.cli.compress import compress_command
from edgefleet.common.exit_codes import ExitCode
from edgefleet.protocol.signing import write_keypair
from tests.test_compress_outputs import VOCAB, _export_encoder, _sentences

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def _cli() -> typer.Typer:
    app = typer.Typer()
    app.command("compress")(compress_command)
    app.command("noop", hidden=True)(lambda: None)
    return app


def _args(model: Path, npz: Path, out: Path, techniques: str) -> list[str]:
    args = ["compress", str(model), "--data", str(npz), "--metric", "cosine", "--name", "enc", "--version", "1"]
    return [*args, "--out", str(out), "--device-class", "x86-gateway", "--techniques", techniques, "--memory", "off"]


def test_a_model_that_fails_on_the_data_is_exit_2_with_a_report(tmp_path: Path) -> None:
    model = _export_encoder(tmp_path / "encoder.onnx")
    arrays = _sentences()
    arrays["x.input_ids"][5] = VOCAB + 3  # a token id past the vocabulary: the embedding's Gather fails
    npz = tmp_path / "sentences.npz"
    np.savez(npz, **arrays)
    out = tmp_path / "out"

    result = CliRunner().invoke(_cli(), _args(model, npz, out, "fp32,int8-dynamic"))

    assert result.exit_code == ExitCode.USAGE, result.output
    assert "Traceback" not in result.output and "the reference model fails on the validation data" in result.output
    assert f"report in {out / 'report.json'}" in result.output
    saved = json.loads((out / "report.json").read_text())
    assert saved["outcome"] == "stopped" and saved["stopped"]["stage"] == "measuring candidates"
    assert saved["stopped"]["error"] == "ModelRunError"
    assert "indices element out of data bounds" in saved["stopped"]["reason"]
    built = {c["name"]: c["status"] for c in saved["candidates"]}
    assert built["fp32"] == "built" and built["int8-dynamic-pc"] == "built", built
    assert "**Stopped** while measuring candidates: ModelRunError" in (out / "report.md").read_text()


def test_a_bundle_that_cannot_be_written_leaves_the_measurements_in_the_report(tmp_path: Path) -> None:
    model = _export_encoder(tmp_path / "encoder.onnx")
    npz = tmp_path / "sentences.npz"
    np.savez(npz, **_sentences())
    out = tmp_path / "out"
    out.mkdir()
    (out / "bundles").write_text("a file where the bundles folder should be")
    private, _ = write_keypair(tmp_path / "keys")

    result = CliRunner().invoke(_cli(), [*_args(model, npz, out, "fp32"), "--key", str(private)])

    assert result.exit_code == ExitCode.ERROR, result.output
    assert "Traceback" not in result.output and "stopped; report in" in result.output
    saved = json.loads((out / "report.json").read_text())
    assert saved["stopped"]["stage"] == "writing the bundle for x86-gateway", saved["stopped"]
    assert saved["selections"][0]["chosen"] == "fp32" and saved["selections"][0]["bundle"] is None
    fp32 = saved["candidates"][0]["measured"]
    assert fp32["metric"] == pytest.approx(1.0) and fp32["latency_ms_b1"] > 0
