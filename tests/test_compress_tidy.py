"""The tidy step after INT8 quantization: smaller files that compute the same, with ONNX Runtime's own
quantizer and kernels, and the issue's size target on the bench's digits CNN."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from edgefleet.compression import EvalOptions, compress
from edgefleet.compression.candidates.quantize import ArrayReader
from edgefleet.compression.export import export_onnx
from edgefleet.compression.tidy import tidy_file, tidy_model
from edgefleet.local.digits import DigitsData, load_digits_data, train_digits_cnn

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py

FAST = EvalOptions(memory="in-process", latency_runs=5, latency_budget_s=0.1)


@pytest.fixture(scope="module")
def data() -> DigitsData:
    return load_digits_data()


@pytest.fixture(scope="module")
def cnn_onnx(tmp_path_factory: pytest.TempPathFactory, data: DigitsData) -> Path:
    """A small digits CNN exported and pre-processed for the quantizer, as the pipeline does."""
    folder = tmp_path_factory.mktemp("cnn")
    cnn, _ = train_digits_cnn(data, channels=8, epochs=2)
    exported = export_onnx(cnn, torch.from_numpy(data.x_test[:2]), folder / "cnn.onnx")
    prepared = folder / "cnn.prep.onnx"
    quant_pre_process(str(exported), str(prepared))
    return prepared


def _run(path: Path, x: np.ndarray, scratch: Path) -> tuple[np.ndarray, list[str]]:
    """Outputs, and the op types of the graph ONNX Runtime actually runs (after its QDQ fusions)."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.optimized_model_filepath = str(scratch / f"{path.stem}.optimized.onnx")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    ops = sorted(n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node)
    return session.run(None, {"input": x})[0], ops


@pytest.mark.parametrize("kind", ["dynamic", "static"])
def test_tidy_keeps_outputs_and_fused_kernels(cnn_onnx: Path, data: DigitsData, tmp_path: Path, kind: str) -> None:
    raw = tmp_path / f"{kind}.onnx"
    if kind == "dynamic":
        quantize_dynamic(str(cnn_onnx), str(raw), per_channel=True, weight_type=QuantType.QInt8)
    else:
        reader = ArrayReader({"input": data.x_train[:128]})
        quantize_static(
            str(cnn_onnx),
            str(raw),
            reader,
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
        )
    tidied = tmp_path / f"{kind}.tidy.onnx"
    shutil.copyfile(raw, tidied)

    result = tidy_file(tidied)

    before, before_ops = _run(raw, data.x_test, tmp_path)
    after, after_ops = _run(tidied, data.x_test, tmp_path)
    np.testing.assert_array_equal(after, before)
    assert after_ops == before_ops
    assert tidied.stat().st_size == result.bytes_after < result.bytes_before == raw.stat().st_size
    model = onnx.load(str(tidied))
    assert not any(n.name for n in model.graph.node)
    # Inferred shapes stay, under the new names: ONNX Runtime's transformer fusions need them.
    produced = {name for node in model.graph.node for name in node.output}
    assert len(model.graph.value_info) == len(onnx.load(str(raw)).graph.value_info) - result.stale_shapes > 0
    assert {v.name for v in model.graph.value_info} <= produced
    assert {o.domain for o in model.opset_import} <= {n.domain for n in model.graph.node} | {""}
    assert [i.name for i in model.graph.input] == ["input"] and [o.name for o in model.graph.output] == ["output"]
    if kind == "static":
        assert result.zero_bias_zero_points == 3  # two convolutions and the classifier


def test_tidy_drops_unused_and_merges_duplicate_initializers() -> None:
    weight = numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(2, 3), "w")
    twin = numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(2, 3), "w_copy")
    stale = numpy_helper.from_array(np.ones(4, dtype=np.float32), "w_fp32_left_over")
    graph = helper.make_graph(
        [
            helper.make_node("Add", ["x", "w"], ["a"], name="first"),
            helper.make_node("Add", ["a", "w_copy"], ["y"], name="second"),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        initializer=[weight, twin, stale],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)])
    x = np.full((2, 3), 0.5, dtype=np.float32)
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})

    result = tidy_model(model)

    assert (result.unused_initializers, result.duplicate_initializers, result.unused_opsets) == (2, 1, 1)
    assert len(model.graph.initializer) == 1 and [o.domain for o in model.opset_import] == [""]
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    np.testing.assert_array_equal(got[0], expected[0])


def test_int8_candidates_of_the_bench_cnn_meet_the_size_and_accuracy_targets(tmp_path: Path, data: DigitsData) -> None:
    """Issue 4: INT8 size <= 0.3x FP32 and accuracy within 1 point, on bench_compress.py's digits CNN."""
    cnn, _ = train_digits_cnn(data, channels=32, epochs=8)

    report = compress(
        cnn,
        {"x": data.x_test, "y": data.y_test, "x_train": data.x_train, "y_train": data.y_train},
        metric="accuracy",
        out_dir=tmp_path,
        name="digits-cnn",
        version="1.0.0",
        device_classes=["x86-gateway"],
        techniques=["fp32", "int8-dynamic", "int8-static"],
        evaluation=FAST,
    )

    fp32 = report.candidate("fp32").measured
    assert fp32 is not None
    int8 = [c for c in report.candidates if c.precision == "int8"]
    assert {c.name for c in int8} == {"int8-dynamic", "int8-dynamic-pc", "int8-dynamic-pc-rr", "int8-static-pc"}
    for candidate in int8:
        m = candidate.measured
        assert m is not None, candidate.reason or candidate.eval_error
        assert m.size_mb <= 0.3 * fp32.size_mb, f"{candidate.name}: {m.size_mb / fp32.size_mb:.4f}x FP32"
        assert m.drop <= 0.01, f"{candidate.name}: {m.drop * 100:.2f} points lost"
