"""`edgefleet bundle create` with models it cannot guess inputs for: real test inputs from a .npz, the
self-test's tolerances, a TFLite file run by LiteRT, and a model the runtime refuses (a model error is exit 4
with the runtime's reason, never a traceback)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from typer.testing import CliRunner

from edgefleet.agent.serving.model import load_model
from edgefleet.cli.main import app
from edgefleet.common.exit_codes import ExitCode
from edgefleet.protocol.bundle import Manifest, extract_bundle
from tests.conftest import Keys

runner = CliRunner()
ASSETS = Path(__file__).parent / "assets"


def _create(model: Path, out: Path, keys: Keys, *extra: str):  # type: ignore[no-untyped-def]
    return runner.invoke(app, [
        "bundle", "create", str(model), "--name", "m", "--version", "1", "--device-class", "x86-gateway",
        "--key", str(keys.private), "--out", str(out), "--format", "json", *extra,
    ])  # fmt: skip


def _tiny_vocabulary_model(tmp_path: Path) -> Path:
    """A text model (an exported embedding with random weights) whose vocabulary has 5 tokens: the generated
    integers 0..9 are out of its range."""
    torch = pytest.importorskip("torch", reason="torch (compression extra) not installed")

    torch.manual_seed(2)
    net = torch.nn.Sequential(torch.nn.Embedding(5, 4), torch.nn.Flatten(), torch.nn.Linear(12, 2))
    path = tmp_path / "tokens.onnx"
    torch.onnx.export(
        net.eval(), (torch.zeros(1, 3, dtype=torch.int64),), str(path), input_names=["ids"], output_names=["y"],
        dynamic_axes={"ids": {0: "batch"}, "y": {0: "batch"}}, opset_version=17, dynamo=False,
    )  # fmt: skip
    return path


def _manifest(archive: Path, folder: Path) -> Manifest:
    return Manifest.model_validate_json(extract_bundle(archive, folder).manifest)


def test_a_model_that_refuses_generated_inputs_is_exit_4_and_real_inputs_build_it(tmp_path: Path, keys: Keys) -> None:
    model = _tiny_vocabulary_model(tmp_path)
    ids = np.array([[0, 4, 2], [1, 1, 3]], dtype=np.int64)
    np.savez(tmp_path / "rows.npz", ids=ids)

    guessed = _create(model, tmp_path / "a.bundle", keys)
    given = _create(model, tmp_path / "b.bundle", keys, "--test-inputs", str(tmp_path / "rows.npz"),
                    "--rtol", "0.001", "--atol", "0.0001")  # fmt: skip

    assert guessed.exit_code == ExitCode.BUNDLE_INVALID, guessed.output
    assert "the model fails on test input 0 (generated" in guessed.output and "--test-inputs" in guessed.output
    assert "Traceback" not in guessed.output and not (tmp_path / "a.bundle").exists()
    assert given.exit_code == 0, given.output
    manifest = _manifest(tmp_path / "b.bundle", tmp_path / "b")
    assert np.array_equal(manifest.test_vectors[0].inputs["ids"].to_array(), ids)
    assert (manifest.rtol, manifest.atol) == (0.001, 0.0001)


def test_a_tflite_file_is_bundled_with_outputs_litert_computes(tmp_path: Path, keys: Keys) -> None:
    """tests/assets/affine.tflite: y = x @ w + b, converted by TensorFlow, with the x and y it recorded."""
    pytest.importorskip("ai_edge_litert", reason="ai-edge-litert (tflite extra) not installed")
    recorded = np.load(ASSETS / "affine.npz")
    np.savez(tmp_path / "x.npz", x=recorded["x"])

    created = _create(ASSETS / "affine.tflite", tmp_path / "t.bundle", keys, "--test-inputs", str(tmp_path / "x.npz"))

    assert created.exit_code == 0, created.output
    digest = json.loads(created.stdout)["digest"]
    manifest = _manifest(tmp_path / "t.bundle", tmp_path / "t")
    assert manifest.model_format == "tflite" and manifest.model_file == "model.tflite"
    (vector,) = manifest.test_vectors
    np.testing.assert_allclose(vector.outputs["y"].to_array(), recorded["y"], rtol=1e-5, atol=1e-6)
    loaded = load_model(digest, manifest, tmp_path / "t" / "model.tflite", chain=["litert"])  # runs the self-test
    assert loaded.runtime.key == "litert"


def test_a_model_needing_an_operator_the_runtime_lacks_is_refused_with_its_name(tmp_path: Path, keys: Keys) -> None:
    node = helper.make_node("Frobnicate", ["x"], ["y"], domain="com.example.ops")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])  # fmt: skip
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.example.ops", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    onnx.save(model, tmp_path / "custom.onnx")

    refused = _create(tmp_path / "custom.onnx", tmp_path / "c.bundle", keys)
    missing = _create(tmp_path / "nothing.onnx", tmp_path / "n.bundle", keys)

    assert refused.exit_code == ExitCode.BUNDLE_INVALID, refused.output
    assert "Frobnicate" in refused.output and "ONNX Runtime cannot load it" in refused.output
    assert "Traceback" not in refused.output
    assert missing.exit_code == ExitCode.NOT_FOUND and "nothing.onnx: no such file" in missing.output


@pytest.mark.parametrize(
    ("onnx_type", "wire"), [(TensorProto.STRING, "tensor(string)"), (TensorProto.BFLOAT16, "tensor(bfloat16)")]
)
def test_strings_and_bfloat16_are_refused_when_the_bundle_is_built(
    tmp_path: Path, keys: Keys, onnx_type: int, wire: str
) -> None:
    node = helper.make_node("Identity", ["x"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", onnx_type, [None])],
                              [helper.make_tensor_value_info("y", onnx_type, [None])])  # fmt: skip
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "m.onnx")

    refused = _create(tmp_path / "m.onnx", tmp_path / "m.bundle", keys)

    assert refused.exit_code == ExitCode.BUNDLE_INVALID, refused.output
    assert f"'x' is a {wire}" in refused.output.replace("\n", " ") and not (tmp_path / "m.bundle").exists()
