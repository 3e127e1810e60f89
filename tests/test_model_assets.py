"""Model assets and the model card travel: an app on the device feeds a text model it has never seen.

A text classifier (an embedding and a linear layer, exported from PyTorch with random weights) is
bundled with its vocabulary, labels, preprocessing and output roles through `bundle create`. A real
agent activates it; the "app" knows nothing but the socket: it reads the card from ModelInfo, fetches
the vocabulary with GetAsset, tokenizes a sentence as the card says and gets the same logits raw ONNX
Runtime gives for those ids.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from typer.testing import CliRunner

from edgefleet.agent.serving.client import InferenceClient
from edgefleet.cli.main import app
from edgefleet.local.fleet import LocalFleet
from tests.conftest import Keys

WORDS = ["[UNK]", "the", "camera", "sees", "a", "cat", "dog", "nothing", "red", "car", "is", "here", "not"]
LABELS = ["nothing", "animal", "vehicle"]


def _text_classifier(path: Path) -> Path:
    torch = pytest.importorskip("torch")

    class Classifier(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Embedding(len(WORDS), 8)
            self.head = torch.nn.Linear(8, len(LABELS))

        def forward(self, token_ids):  # type: ignore[no-untyped-def]
            return self.head(self.embed(token_ids).mean(dim=1))

    torch.manual_seed(7)
    torch.onnx.export(
        Classifier().eval(), (torch.zeros(1, 4, dtype=torch.int64),), str(path), input_names=["token_ids"],
        output_names=["logits"], dynamic_axes={"token_ids": {0: "batch", 1: "tokens"}, "logits": {0: "batch"}},
        dynamo=False,
    )  # fmt: skip
    return path


def _tokenize(text: str, vocabulary: list[str], step: dict) -> np.ndarray:
    """What an app does with the card's tokenize step: words to ids, unknown ones to the unknown token."""
    index = {word: i for i, word in enumerate(vocabulary)}
    words = text.lower().split() if step["params"].get("lowercase") else text.split()
    unknown = index[str(step["params"]["unknown"])]
    return np.asarray([[index.get(w, unknown) for w in words]], dtype=np.int64)


def test_an_app_feeds_a_text_model_from_its_card_and_assets_alone(
    tmp_path: Path, fleet: LocalFleet, keys: Keys
) -> None:
    # Prepare: the model, its vocabulary, labels, preprocessing, a 2.5 MB config asset (several chunks)
    model = _text_classifier(tmp_path / "classifier.onnx")
    (tmp_path / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    (tmp_path / "labels.txt").write_text("\n".join(LABELS) + "\n")
    steps = [{"op": "tokenize", "input": "token_ids", "params": {"asset": "vocab.txt", "lowercase": True,
                                                                  "unknown": "[UNK]"}}]  # fmt: skip
    (tmp_path / "pre.json").write_text(json.dumps(steps))
    big = np.random.default_rng(0).bytes(2_500_000)
    (tmp_path / "calibration.bin").write_bytes(big)
    np.savez(tmp_path / "rows.npz", token_ids=np.asarray([[1, 2, 3, 5], [4, 8, 9, 0]], dtype=np.int64))
    created = CliRunner().invoke(app, [
        "bundle", "create", str(model), "--name", "scene-text", "--version", "1.0.0", "--device-class", "x86-gateway",
        "--key", str(keys.private), "-o", str(tmp_path / "text.bundle"), "--test-inputs", str(tmp_path / "rows.npz"),
        "--asset", f"vocabulary={tmp_path / 'vocab.txt'}", "--asset", f"config={tmp_path / 'calibration.bin'}",
        "--labels", str(tmp_path / "labels.txt"), "--output-role", "logits=logits",
        "--preprocessing", str(tmp_path / "pre.json"), "--description", "What the camera's caption is about.",
        "--format", "json",
    ])  # fmt: skip
    assert created.exit_code == 0, created.output
    digest = json.loads(created.output)["digest"]
    fleet.start_coordinator()
    agent = fleet.add_agent("gw-1")
    fleet.start_agent("gw-1")
    fleet.wait_registered(["gw-1"], timeout=30)
    fleet.upload(tmp_path / "text.bundle")
    fleet.deploy(digest)
    fleet.wait_active(digest, ["gw-1"])

    # Execute: the app reads the card, fetches the vocabulary, tokenizes and predicts
    with InferenceClient(agent.target) as client:
        served, card = client.model_card()
        [step] = card.preprocessing
        vocab_bytes = client.asset(str(step.params["asset"]), bundle_digest=served)
        config_bytes = client.asset("calibration.bin")
        ids = _tokenize("The camera sees a RED car", vocab_bytes.decode().split("\n")[:-1], step.model_dump())
        logits = client.predict({"token_ids": ids}).outputs["logits"]
        with pytest.raises(grpc.RpcError) as missing:
            client.asset("tokenizer.json")
        with pytest.raises(grpc.RpcError) as stale:
            client.asset("vocab.txt", bundle_digest="0" * 64)

    # Assert: the card says what the bundle was given; the assets are the files, byte for byte; the
    # logits are raw ONNX Runtime's for the ids the card's preprocessing made
    assert served == digest and card.labels == LABELS and card.output_roles == {"logits": "logits"}
    assert card.description == "What the camera's caption is about."
    by_name = {a.name: a for a in card.assets}
    assert (by_name["vocab.txt"].role, by_name["vocab.txt"].media_type) == ("vocabulary", "text/plain")
    assert hashlib.sha256(vocab_bytes).hexdigest() == by_name["vocab.txt"].sha256
    assert config_bytes == big and by_name["calibration.bin"].size == len(big)
    assert ids.tolist() == [[1, 2, 3, 4, 8, 9]]
    expected = ort.InferenceSession(str(model)).run(None, {"token_ids": ids})[0]
    np.testing.assert_array_equal(logits, expected)
    assert LABELS[int(np.argmax(logits))] in LABELS
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND and "vocab.txt" in str(missing.value.details())
    assert stale.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_an_asset_that_would_replace_the_model_or_an_unknown_role_is_refused(tmp_path: Path, keys: Keys) -> None:
    model = _text_classifier(tmp_path / "model.onnx")
    base = ["bundle", "create", str(model), "--name", "t", "--version", "1", "--device-class", "x86-gateway",
            "--key", str(keys.private), "-o", str(tmp_path / "t.bundle")]  # fmt: skip
    clash = CliRunner().invoke(app, [*base, "--asset", f"other={model}"])
    assert clash.exit_code == 4 and "already has a file of that name" in clash.output
    role = CliRunner().invoke(app, [*base, "--asset", f"weights={model}"])
    assert role.exit_code == 2 and "ROLE one of tokenizer" in role.output
    absent = CliRunner().invoke(app, [*base, "--asset", f"vocabulary={tmp_path / 'none.txt'}"])
    assert absent.exit_code == 5 and "none.txt: no such file" in absent.output
    assert not (tmp_path / "t.bundle").exists()
