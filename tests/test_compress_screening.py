"""Built candidates are screened before they are measured: identical files once, none larger than the source,
no "INT8" that holds no INT8, and an input that is already quantized is labelled so.

Models: PyTorch architectures with random weights (a GRU sequence encoder, a logistic-regression
head, the BERT-like encoder of ``test_compress_outputs``), and that encoder statically quantized by
ONNX Runtime as the stand-in for a third-party INT8 package.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

from edgefleet.compression import BuildOptions, CompressionReport, EvalOptions, compress
from edgefleet.compression.candidates.quantize import ArrayReader
from tests.test_compress_outputs import _export_encoder, _sentences

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py

FAST = EvalOptions(memory="off", latency_runs=5, latency_budget_s=0.05)


class GRUEncoder(torch.nn.Module):
    """The last hidden state of a one-layer GRU: weights ONNX Runtime's dynamic quantizer leaves alone."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.gru = torch.nn.GRU(16, 32, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, hidden = self.gru(x)
        return hidden[-1]


def _run(model: object, arrays: dict[str, np.ndarray], out: Path, techniques: list[str], **kw: object):
    return compress(
        model,  # type: ignore[arg-type]
        arrays,
        metric="cosine",
        out_dir=out,
        name="m",
        version="1",
        device_classes=["x86-gateway"],
        techniques=techniques,
        evaluation=FAST,
        **kw,  # type: ignore[arg-type]
    )


def test_byte_identical_candidates_are_measured_once_and_named_together(tmp_path: Path) -> None:
    x = np.random.default_rng(0).normal(size=(32, 10, 16)).astype(np.float32)
    report = _run(GRUEncoder(), {"x": x}, tmp_path, ["fp32", "int8-dynamic"])

    first, *others = (report.candidate(n) for n in ("int8-dynamic", "int8-dynamic-pc", "int8-dynamic-pc-rr"))
    assert first.same_files == ["int8-dynamic-pc", "int8-dynamic-pc-rr"]
    assert all(c.status == "duplicate" and c.measured is None for c in others)
    assert all(c.reason is not None and c.reason.startswith("byte-identical to int8-dynamic") for c in others)
    assert "int8-dynamic, int8-dynamic-pc, int8-dynamic-pc-rr gave the same file" in report.notes
    # And the one file holds no INT8 at all: it is not offered as an INT8 model.
    assert first.status == "rejected" and "no INT8 operator or weight" in (first.reason or "")
    saved = json.loads((tmp_path / "report.json").read_text())
    assert {c["name"]: c["sha256"] for c in saved["candidates"]}["int8-dynamic-pc"] == first.sha256


def test_a_candidate_larger_than_its_source_is_rejected_unless_allowed(tmp_path: Path) -> None:
    torch.manual_seed(3)
    head = torch.nn.Linear(4, 3)  # 15 weights: INT8's extra operators outweigh what they save
    x = np.random.default_rng(1).normal(size=(16, 4)).astype(np.float32)
    options = BuildOptions(dynamic_variants=["per-tensor"])

    strict = _run(head, {"x": x}, tmp_path / "strict", ["fp32", "int8-dynamic"], build=options)
    allowed = _run(
        head,
        {"x": x},
        tmp_path / "allowed",
        ["fp32", "int8-dynamic"],
        build=BuildOptions(dynamic_variants=["per-tensor"], allow_larger=True),
    )

    rejected, kept = strict.candidate("int8-dynamic"), allowed.candidate("int8-dynamic")
    assert rejected.status == "rejected" and rejected.measured is None
    assert "larger than its source" in (rejected.reason or "") and "--allow-larger" in (rejected.reason or "")
    assert "int8-dynamic" in strict.selections[0].rejected
    assert kept.usable and kept.measured is not None
    assert kept.measured.size_mb > allowed.candidate("fp32").measured.size_mb  # type: ignore[union-attr]


@pytest.fixture(scope="module")
def int8_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("int8-package")
    fp32 = _export_encoder(folder / "encoder.onnx")
    arrays = _sentences()
    reader = ArrayReader({"input_ids": arrays["x.input_ids"], "attention_mask": arrays["x.attention_mask"]})
    out = folder / "encoder-int8.onnx"
    quantize_static(
        str(fp32),
        str(out),
        reader,
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
    )
    return out


def test_an_already_quantized_input_is_labelled_int8_and_not_quantized_again(
    int8_package: Path, tmp_path: Path
) -> None:
    report: CompressionReport = _run(int8_package, _sentences(), tmp_path, ["fp32", "ort-opt", "int8-dynamic", "fp16"])

    reference = report.candidates[0]
    assert reference.name == "int8-input" and reference.precision == "int8" and reference.usable
    assert report.reference["precision"] == "int8" and "DequantizeLinear" in report.reference["quantized"]
    for name in ("int8-dynamic", "int8-dynamic-pc", "fp16"):
        candidate = report.candidate(name)
        assert candidate.status == "not built" and "already quantized" in (candidate.reason or ""), candidate
    assert report.candidate("int8-input-ort-opt").precision == "int8"
    markdown = (tmp_path / "report.md").read_text()
    assert ", int8), metric **cosine**" in markdown and "the input model is already quantized" in markdown
