"""Sequence serving: a recurrent model's state stays on the agent between the chunks of a sequence.

A time-major GRU (ONNX's default recurrent layout; exported from PyTorch with random weights) is bundled
with `--state h0=hn`. Two apps stream their sequences chunk by chunk, interleaved, through a real agent;
each gets what raw ONNX Runtime gives for its whole sequence at once, without ever sending the state.
Live sequences are bounded, idle ones expire, and a sequence that is not live is refused, not restarted.
"""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from typer.testing import CliRunner

from edgefleet.agent.serving.client import InferenceClient
from edgefleet.cli.main import app
from edgefleet.local.fleet import LocalFleet, wait_until
from edgefleet.protocol.grpc_gen import inference_pb2
from edgefleet.protocol.tensors import tensor_from_proto, tensor_to_proto
from tests.conftest import Keys

FEATURES, HIDDEN, CHUNK = 4, 8, 5


def _gru(path: Path) -> Path:
    torch = pytest.importorskip("torch")
    torch.manual_seed(3)

    class Step(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gru = torch.nn.GRU(FEATURES, HIDDEN)  # time-major: [time, batch, features]

        def forward(self, x, h0):  # type: ignore[no-untyped-def]
            return self.gru(x, h0)

    torch.onnx.export(
        Step().eval(), (torch.zeros(CHUNK, 1, FEATURES), torch.zeros(1, 1, HIDDEN)), str(path),
        input_names=["x", "h0"], output_names=["y", "hn"], dynamic_axes={"x": {0: "time"}, "y": {0: "time"}},
        dynamo=False,
    )  # fmt: skip
    return path


def _request(sequence: str, x: np.ndarray, *, start: bool = False, end: bool = False) -> inference_pb2.PredictRequest:
    return inference_pb2.PredictRequest(
        inputs={"x": tensor_to_proto(x)}, sequence_id=sequence, sequence_start=start, sequence_end=end
    )


def _code(client: InferenceClient, request: inference_pb2.PredictRequest) -> grpc.StatusCode:
    try:
        client.stub.Predict(request, timeout=10)
    except grpc.RpcError as exc:
        return exc.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def test_interleaved_sequences_keep_their_own_state_on_the_agent(tmp_path: Path, fleet: LocalFleet, keys: Keys) -> None:
    # Prepare: the bundle declares the state, at most 2 live sequences, 1 s idle timeout
    model = _gru(tmp_path / "gru.onnx")
    np.savez(
        tmp_path / "rows.npz", x=np.ones((CHUNK, 1, FEATURES), np.float32), h0=np.zeros((1, 1, HIDDEN), np.float32)
    )
    created = CliRunner().invoke(app, [
        "bundle", "create", str(model), "--name", "gru", "--version", "1.0.0", "--device-class", "x86-gateway",
        "--key", str(keys.private), "-o", str(tmp_path / "gru.bundle"), "--test-inputs", str(tmp_path / "rows.npz"),
        "--state", "h0=hn", "--max-sequences", "2", "--sequence-idle-s", "1", "--format", "json",
    ])  # fmt: skip
    assert created.exit_code == 0, created.output
    digest = json.loads(created.output)["digest"]
    fleet.start_coordinator()
    agent = fleet.add_agent("gw-1")
    fleet.start_agent("gw-1")
    fleet.wait_registered(["gw-1"], timeout=30)
    fleet.upload(tmp_path / "gru.bundle")
    fleet.deploy(digest)
    fleet.wait_active(digest, ["gw-1"])
    rng = np.random.default_rng(0)
    frames = {name: rng.standard_normal((4 * CHUNK, 1, FEATURES)).astype(np.float32) for name in ("a", "b")}

    with InferenceClient(agent.target) as client:
        # Execute: sequence a by unary Predict, b by PredictStream, chunk by chunk, interleaved
        got: dict[str, list[np.ndarray]] = {"a": [], "b": []}
        for i in range(4):
            chunk = frames["a"][i * CHUNK : (i + 1) * CHUNK]
            answer = client.stub.Predict(_request("a", chunk, start=i == 0), timeout=10)
            assert set(answer.outputs) == {"y"}  # the state stays on the agent
            got["a"].append(tensor_from_proto(answer.outputs["y"]))
            if i == 1:  # b runs its whole sequence while a is half way
                stream = client.stub.PredictStream(
                    iter([_request("b", frames["b"][j * CHUNK : (j + 1) * CHUNK], start=j == 0) for j in range(4)]),
                    timeout=10,
                )
                got["b"] = [tensor_from_proto(r.outputs["y"]) for r in stream]

        # ... a third sequence while two are live, a request that passes the state itself
        third = _code(client, _request("c", frames["a"][:CHUNK], start=True))
        with_state = inference_pb2.PredictRequest(
            inputs={
                "x": tensor_to_proto(frames["a"][:CHUNK]),
                "h0": tensor_to_proto(np.zeros((1, 1, HIDDEN), np.float32)),
            },
            sequence_id="a",
        )
        passing_state = _code(client, with_state)
        ended = _code(client, _request("a", frames["a"][:CHUNK], end=True))
        after_end = _code(client, _request("a", frames["a"][:CHUNK]))

        # ... and, with b and a new c live, waits until b (idle since its stream) has expired: d then finds room
        assert _code(client, _request("c", frames["a"][:CHUNK], start=True)) == grpc.StatusCode.OK
        wait_until(lambda: _code(client, _request("d", frames["a"][:CHUNK], start=True)) == grpc.StatusCode.OK,
                   timeout=30, what="an idle sequence to expire")  # fmt: skip
        expired = _code(client, _request("b", frames["b"][:CHUNK]))

    # Assert: each sequence equals raw ONNX Runtime over the whole sequence from zeros
    session = ort.InferenceSession(str(model))
    for name in ("a", "b"):
        expected = session.run(["y"], {"x": frames[name], "h0": np.zeros((1, 1, HIDDEN), np.float32)})[0]
        np.testing.assert_allclose(np.concatenate(got[name]), expected, rtol=1e-5, atol=1e-6)
    assert third == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert passing_state == grpc.StatusCode.INVALID_ARGUMENT
    assert ended == grpc.StatusCode.OK and after_end == grpc.StatusCode.FAILED_PRECONDITION
    assert expired == grpc.StatusCode.FAILED_PRECONDITION


def test_a_state_output_that_cannot_feed_its_input_is_refused_at_build(tmp_path: Path, keys: Keys) -> None:
    model = _gru(tmp_path / "gru.onnx")
    result = CliRunner().invoke(app, [
        "bundle", "create", str(model), "--name", "gru", "--version", "1", "--device-class", "x86-gateway",
        "--key", str(keys.private), "-o", str(tmp_path / "g.bundle"), "--state", "h0=y",
    ])  # fmt: skip
    assert result.exit_code == 4 and "sequence state y -> h0" in result.output, result.output
    assert not (tmp_path / "g.bundle").exists()
