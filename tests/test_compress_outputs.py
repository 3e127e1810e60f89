"""Every output is scored (the worst gates), ``--output`` chooses, and an output that copies an input is noted.

The models are PyTorch architectures with random weights exported by the compressor itself: a small
BERT-like encoder whose first output is the input ids (as sentence-embedding exports often have) and
whose second is the pooled embedding, and a classifier that also returns its input. A *broken*
candidate is the reference's ONNX file with one weight changed: a real file on real ONNX Runtime.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import typer
from onnx import numpy_helper
from typer.testing import CliRunner

from edgefleet.cli.compress import compress_command
from edgefleet.compression import CompressionReport, EvalOptions, compress
from edgefleet.compression.candidates.base import Candidate
from edgefleet.compression.data import EvalData
from edgefleet.compression.errors import MetricError
from edgefleet.compression.evaluate import evaluate_candidates
from edgefleet.compression.export import export_onnx
from edgefleet.compression.metrics import get_metric
from tests.models import affine_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py

FAST = EvalOptions(memory="off", latency_runs=5, latency_budget_s=0.05)
VOCAB, SEQ, ROWS = 64, 12, 48


class Block(torch.nn.Module):
    """One post-norm transformer encoder block (attention written out: no fused fast path to export)."""

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads, self.scale = heads, 1 / math.sqrt(d // heads)
        self.qkv, self.out = torch.nn.Linear(d, 3 * d), torch.nn.Linear(d, d)
        self.norm1, self.norm2 = torch.nn.LayerNorm(d), torch.nn.LayerNorm(d)
        self.ff = torch.nn.Sequential(torch.nn.Linear(d, 4 * d), torch.nn.GELU(), torch.nn.Linear(4 * d, d))

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, s, d = h.shape
        q, k, v = self.qkv(h).reshape(b, s, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        scores = (q @ k.transpose(-1, -2)) * self.scale + (1.0 - mask[:, None, None, :]) * -1e4
        attended = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, s, d)
        h = self.norm1(h + self.out(attended))
        return self.norm2(h + self.ff(h))


class IdsAndPooled(torch.nn.Module):
    """A sentence encoder whose export returns (input_ids, mean-pooled embedding)."""

    def __init__(self, d: int = 32) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(VOCAB, d)
        self.blocks = torch.nn.ModuleList([Block(d, 4), Block(d, 4)])

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mask = attention_mask.to(torch.float32)
        h = self.embed(input_ids)
        for block in self.blocks:
            h = block(h, mask)
        pooled = (h * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp(min=1.0)
        return input_ids, pooled


class InputAndLogits(torch.nn.Module):
    """A 16-32-5 classifier that also hands its input back."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.net = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 5))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, self.net(x)


def _sentences() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    ids = rng.integers(1, VOCAB, size=(ROWS, SEQ), dtype=np.int64)
    mask = np.ones((ROWS, SEQ), np.int64)
    for row, length in enumerate(rng.integers(4, SEQ + 1, size=ROWS)):
        mask[row, length:] = 0
        ids[row, length:] = 0
    return {"x.input_ids": ids, "x.attention_mask": mask}


def _export_encoder(path: Path) -> Path:
    arrays = _sentences()
    sample = (torch.from_numpy(arrays["x.input_ids"][:2]), torch.from_numpy(arrays["x.attention_mask"][:2]))
    return export_onnx(
        IdsAndPooled(), sample, path, input_names=["input_ids", "attention_mask"], output_names=["ids", "pooled"]
    )


def _broken_copy(source: Path, out: Path, initializer_suffix: str) -> Path:
    """The same graph with the last initializer whose name ends so replaced by noise."""
    model = onnx.load(str(source))
    target = [t for t in model.graph.initializer if t.name.endswith(initializer_suffix)][-1]
    values = numpy_helper.to_array(target)
    noise = np.random.default_rng(7).normal(0, 3, values.shape).astype(values.dtype)
    target.CopyFrom(numpy_helper.from_array(noise, target.name))
    onnx.save(model, str(out))
    return out


def _built(name: str, path: Path) -> Candidate:
    return Candidate(name, "fp32", "fp32", "onnx", frozenset({"cpu"}), status="built", path=path)


def _eval_data() -> EvalData:
    arrays = _sentences()
    return EvalData({"input_ids": arrays["x.input_ids"], "attention_mask": arrays["x.attention_mask"]})


def test_a_candidate_that_breaks_the_second_output_does_not_score_as_perfect(tmp_path: Path) -> None:
    reference = _export_encoder(tmp_path / "encoder.onnx")
    broken = _broken_copy(reference, tmp_path / "broken.onnx", "ff.2.bias")
    candidates = [_built("fp32", reference), _built("broken", broken)]

    plan = evaluate_candidates(candidates, _eval_data(), get_metric("cosine"), None, FAST)

    good, bad = candidates[0].measured, candidates[1].measured
    assert good is not None and bad is not None
    assert good.metric == pytest.approx(1.0) and good.drop == pytest.approx(0.0)
    assert set(bad.outputs) == {"pooled"}, "the copied input ids are not scored"
    assert bad.gating_output == "pooled"
    assert bad.metric < 0.9 and bad.drop > 0.1, bad
    assert bad.outputs["pooled"].score == bad.metric
    assert plan.passthrough == {"ids": "input_ids"} and plan.scored == ["pooled"]
    assert plan.notes() == ["output 'ids' copies input 'input_ids': noted, not scored"]


def test_the_worst_output_gates_and_each_keeps_its_own_score(tmp_path: Path) -> None:
    reference = tmp_path / "classifier.onnx"
    x = np.random.default_rng(2).normal(size=(64, 16)).astype(np.float32)
    two_floats = export_onnx(InputAndLogits(), torch.from_numpy(x[:2]), reference, output_names=["echo", "logits"])
    # Labels the reference gets right: its accuracy is 1.0, the broken head's is what it is.
    labels = InputAndLogits()(torch.from_numpy(x))[1].argmax(1).numpy()
    broken = _broken_copy(two_floats, tmp_path / "broken.onnx", "net.2.weight")
    candidates = [_built("fp32", reference), _built("broken", broken)]

    evaluate_candidates(candidates, EvalData({"input": x}, labels), get_metric("accuracy"), None, FAST)

    bad = candidates[1].measured
    assert bad is not None and set(bad.outputs) == {"logits"}
    hand = float(np.mean(_run(broken, x)["logits"].argmax(1) == labels))
    assert bad.outputs["logits"].metric == "accuracy" and bad.metric == pytest.approx(hand)
    assert bad.drop == pytest.approx(1.0 - hand) and hand < 0.8


def _run(path: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, {"input": x}), strict=True))


@pytest.fixture(scope="module")
def encoder_run(tmp_path_factory: pytest.TempPathFactory) -> CompressionReport:
    """The encoder through compress(): FP32 and static INT8, judged by cosine on every output."""
    return compress(
        IdsAndPooled(),
        _sentences(),
        metric="cosine",
        out_dir=tmp_path_factory.mktemp("encoder-run"),
        name="encoder",
        version="1.0.0",
        device_classes=["x86-gateway"],
        techniques=["fp32", "int8-static"],
        evaluation=FAST,
        output_names=["ids", "pooled"],
    )


def test_the_report_scores_every_output_and_notes_the_copy(encoder_run: CompressionReport) -> None:
    saved = json.loads((encoder_run.out_dir / "report.json").read_text())
    assert saved["reference"]["scored_outputs"] == ["pooled"]
    assert saved["reference"]["passthrough_outputs"] == {"ids": "input_ids"}
    static = next(c for c in saved["candidates"] if c["name"].startswith("int8-static"))
    assert set(static["measured"]["outputs"]) == {"pooled"}
    assert static["measured"]["metric"] == static["measured"]["outputs"]["pooled"]["score"] < 1.0
    markdown = (encoder_run.out_dir / "report.md").read_text()
    assert "output 'ids' copies input 'input_ids': noted, not scored" in markdown


def _cli() -> typer.Typer:
    app = typer.Typer()
    app.command("compress")(compress_command)
    app.command("noop", hidden=True)(lambda: None)
    return app


def test_cli_output_chooses_the_scored_outputs(tmp_path: Path) -> None:
    model = _export_encoder(tmp_path / "encoder.onnx")
    npz = tmp_path / "sentences.npz"
    np.savez(npz, **_sentences())
    args = ["compress", str(model), "--data", str(npz), "--metric", "cosine", "--name", "enc", "--version", "1"]
    args += ["--out", str(tmp_path / "out"), "--device-class", "x86-gateway", "--techniques", "fp32"]
    args += ["--memory", "off", "--format", "json"]

    chosen = CliRunner().invoke(_cli(), [*args, "--output", "pooled"])
    unknown = CliRunner().invoke(_cli(), [*args, "--output", "logits"])

    assert chosen.exit_code == 0, chosen.output
    assert json.loads(chosen.stdout)["reference"]["scored_outputs"] == ["pooled"]
    assert unknown.exit_code == 2 and "no output 'logits'; the model's outputs are ids, pooled" in unknown.output


def test_scoring_only_a_copied_input_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(MetricError, match="output 'ids' copies input 'input_ids'; nothing left to score"):
        compress(
            _export_encoder(tmp_path / "encoder.onnx"),
            _sentences(),
            metric="cosine",
            out_dir=tmp_path / "out",
            name="enc",
            version="1",
            device_classes=["x86-gateway"],
            techniques=["fp32"],
            evaluation=FAST,
            score_outputs=["ids"],
        )


def test_an_integer_output_is_scored_by_agreement_with_the_reference(tmp_path: Path) -> None:
    w = np.random.default_rng(4).normal(size=(8, 4)).astype(np.float32)
    reference = affine_model(tmp_path / "affine.onnx", w, np.zeros(4, np.float32))
    broken = affine_model(tmp_path / "broken.onnx", -w, np.zeros(4, np.float32))  # every argmax moves
    x = np.random.default_rng(5).normal(size=(40, 8)).astype(np.float32)
    candidates = [_built("fp32", reference), _built("broken", broken)]

    plan = evaluate_candidates(candidates, EvalData({"x": x}), get_metric("cosine"), None, FAST)

    bad = candidates[1].measured
    assert plan.metric_of == {"y": "cosine", "label": "agreement"}
    assert bad is not None and bad.outputs["label"].score == 0.0 and bad.gating_output in ("y", "label")
    assert bad.outputs["y"].score == pytest.approx(-1.0)
