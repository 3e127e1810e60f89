"""The agent's parts without the network: config, store, model checks and the gRPC API."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from edgefleet.agent.bundles.store import ModelStore, StoreState
from edgefleet.agent.config import load_config
from edgefleet.agent.errors import ActivationError, InputError
from edgefleet.agent.serving.client import InferenceClient
from edgefleet.agent.serving.model import LoadedModel, load_model
from edgefleet.agent.serving.server import InferenceApi, InferenceService
from edgefleet.agent.telemetry.stats import InferenceStats
from edgefleet.common.errors import ConfigError
from edgefleet.protocol.bundle import Manifest, extract_bundle, sha256_file
from edgefleet.protocol.errors import BundleError
from tests.conftest import DigitsModels, Keys, build
from tests.models import two_input_model


def _load(tmp_path: Path, model: Path, keys: Keys, **kw) -> LoadedModel:  # type: ignore[no-untyped-def]
    archive, digest = build(model, tmp_path / "b.bundle", keys, version="1", **kw)
    signed = extract_bundle(archive, tmp_path / "x")
    manifest = Manifest.model_validate_json(signed.manifest)
    return load_model(digest, manifest, tmp_path / "x" / "model.onnx")


# -- config ------------------------------------------------------------------------------
def test_config_errors_name_key_path_value_and_reason(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(
        'device_id = "bad/id"\ndevice_class = "x"\ndata_dir = "d"\ntrusted_keys = ["k.pub"]\n'
        '[broker]\nurl = "http://nope"\ncolour = "blue"\n'
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    text = "\n".join(info.value.problems)
    assert "device_id (value 'bad/id')" in text
    assert "broker.url (value 'http://nope')" in text and "mqtt://" in text
    assert "broker.colour" in text and "Extra inputs are not permitted" in text


def test_config_resolves_relative_paths_from_its_folder(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text('device_id = "pi-1"\ndevice_class = "x"\ndata_dir = "d"\ntrusted_keys = ["k.pub"]\n')
    config = load_config(path)
    assert config.data_dir == tmp_path / "d"
    assert config.trusted_keys == [tmp_path / "k.pub"]
    assert config.socket_path == tmp_path / "d" / "agent.sock"


def test_unreadable_config_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")
    (tmp_path / "bad.toml").write_text("device_id = = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(tmp_path / "bad.toml")


# -- store -------------------------------------------------------------------------------
def test_slots_survive_a_reopen_and_blobs_are_hash_checked(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    assert store.state() == StoreState()
    store.activate("a" * 64)
    store.activate("b" * 64)
    reopened = ModelStore(tmp_path / "store").state()
    assert (reopened.active, reopened.previous, reopened.history) == ("b" * 64, "a" * 64, ("b" * 64, "a" * 64))
    assert not list((tmp_path / "store").glob(".*.tmp")), "no temp files left behind"

    partial = store.partial_path("file", "c" * 64)
    partial.write_bytes(b"payload")
    with pytest.raises(BundleError, match="tampered"):
        store.commit_blob(partial, "c" * 64)
    assert not partial.exists(), "a corrupt download is discarded"
    partial.write_bytes(b"payload")
    good = sha256_file(partial)
    assert store.commit_blob(partial, good) == store.blob_path(good)


def test_a_damaged_state_file_means_no_active_model(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    (tmp_path / "store" / "state.json").write_text("{torn")
    assert store.state() == StoreState()


# -- model -------------------------------------------------------------------------------
def test_multi_input_model_with_int64_runs_and_checks_inputs(tmp_path: Path, keys: Keys) -> None:
    model = _load(tmp_path, two_input_model(tmp_path / "two.onnx"), keys)
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.ones((2, 3), dtype=np.int64)
    out = model.predict({"a": a, "b": b})
    np.testing.assert_array_equal(out["sum"], a + 1)
    np.testing.assert_array_equal(out["twice"], 2 * a)
    assert list(model.predict({"a": a, "b": b}, ["twice"])) == ["twice"]

    with pytest.raises(InputError, match="missing \\['b'\\]"):
        model.predict({"a": a})
    with pytest.raises(InputError, match="unknown \\['c'\\]"):
        model.predict({"a": a, "b": b, "c": b})
    with pytest.raises(InputError, match="dtype float64, model expects float32"):
        model.predict({"a": a.astype(np.float64), "b": b})
    with pytest.raises(InputError, match="dimension 1 is 4, model expects 3"):
        model.predict({"a": np.zeros((2, 4), np.float32), "b": b})
    with pytest.raises(InputError, match="rank 1"):
        model.predict({"a": np.zeros(3, np.float32), "b": b})
    with pytest.raises(InputError, match="unknown outputs"):
        model.predict({"a": a, "b": b}, ["nope"])


def test_activation_fails_when_outputs_differ_from_the_test_vectors(
    tmp_path: Path, keys: Keys, digits: DigitsModels
) -> None:
    archive, digest = build(digits.v1, tmp_path / "b.bundle", keys, version="1")
    signed = extract_bundle(archive, tmp_path / "x")
    manifest = Manifest.model_validate_json(signed.manifest)
    # The same signature, a different model: v2's weights under v1's test vectors.
    with pytest.raises(ActivationError, match="differs from the manifest"):
        load_model(digest, manifest, digits.v2)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not an onnx model")
    with pytest.raises(ActivationError, match="no runtime could load the model: onnxruntime-cpu: failed to load"):
        load_model(digest, manifest, garbage)


# -- gRPC API ----------------------------------------------------------------------------
@pytest.fixture
def api(tmp_path: Path, keys: Keys, digits: DigitsModels):  # type: ignore[no-untyped-def]
    holder: dict[str, LoadedModel | None] = {"model": None}
    server = InferenceApi(
        InferenceService(lambda: holder["model"], InferenceStats(), "x86-gateway"),
        socket_path=tmp_path / "api.sock",
        tcp_port=0,
        max_message_bytes=1024 * 1024,
        workers=2,
    )
    server.start()
    yield server, holder, _load(tmp_path, digits.v1, keys)
    server.stop(0)


def test_api_answers_unavailable_then_serves_the_model(api, digits: DigitsModels) -> None:  # type: ignore[no-untyped-def]
    server, holder, model = api
    target = f"unix://{server.socket_path}"
    with InferenceClient(target) as client:
        with pytest.raises(grpc.RpcError) as info:
            client.predict({"pixels": digits.x_test[:2]})
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert not client.model_info().loaded

        holder["model"] = model
        server.set_serving(True)
        result = client.predict({"pixels": digits.x_test})
        direct = ort.InferenceSession(str(digits.v1)).run(["logits"], {"pixels": digits.x_test})[0]
        np.testing.assert_array_equal(result.outputs["logits"], direct)
        assert (result.model_name, result.model_version, result.bundle_digest) == (
            "digits",
            "1",
            model.digest,
        )
        info_ = client.model_info()
        assert info_.loaded and info_.runtime == "onnxruntime-cpu"
        assert [(i.name, list(i.shape)) for i in info_.inputs] == [("pixels", [-1, 64])]

    health = health_pb2_grpc.HealthStub(grpc.insecure_channel(f"127.0.0.1:{server.tcp_port}"))
    assert health.Check(health_pb2.HealthCheckRequest(service="")).status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"pixels": np.zeros((2, 63), np.float32)}, "dimension 1 is 63, model expects 64"),
        ({"pixels": np.zeros((2, 64), np.int32)}, "dtype int32, model expects float32"),
        ({"image": np.zeros((2, 64), np.float32)}, "missing ['pixels']"),
    ],
)
def test_api_answers_invalid_argument_for_misfit_tensors(api, inputs, message) -> None:  # type: ignore[no-untyped-def]
    server, holder, model = api
    holder["model"] = model
    with InferenceClient(f"unix://{server.socket_path}") as client:
        with pytest.raises(grpc.RpcError) as info:
            client.predict(inputs)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert message in info.value.details()
        # The server keeps serving after a bad request.
        assert client.predict({"pixels": np.zeros((1, 64), np.float32)}).outputs["logits"].shape == (1, 10)


def test_api_refuses_bytes_that_do_not_match_dtype_and_shape(api) -> None:  # type: ignore[no-untyped-def]
    from edgefleet.protocol.grpc_gen import inference_pb2, inference_pb2_grpc

    server, holder, model = api
    holder["model"] = model
    stub = inference_pb2_grpc.InferenceStub(grpc.insecure_channel(f"unix://{server.socket_path}"))
    bad = inference_pb2.PredictRequest(
        inputs={"pixels": inference_pb2.Tensor(dtype="float32", shape=[1, 64], data=b"\x00" * 10)}
    )
    with pytest.raises(grpc.RpcError) as info:
        stub.Predict(bad)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "needs 256 bytes, got 10" in info.value.details()
    weird = inference_pb2.PredictRequest(
        inputs={"pixels": inference_pb2.Tensor(dtype="complex64", shape=[1], data=b"")}
    )
    with pytest.raises(grpc.RpcError) as info:
        stub.Predict(weird)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "unsupported dtype" in info.value.details()
