"""One contract every inference backend keeps, subclassed per backend; and the fallback chain between them.

A backend that cannot run on this machine (no GPU, package missing) skips with the reason the
registry gives, so the skip line says what would be needed.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import pytest

from edgefleet.agent.runtimes import RUNTIMES, Runtime, RuntimeOptions, open_runtime, skip_reason
from edgefleet.agent.runtimes.onnx_gpu import OnnxCudaRuntime, OnnxTensorrtRuntime, ProviderNotActiveError
from edgefleet.protocol.tensors import TensorSpec
from tests.models import affine_model

ASSETS = Path(__file__).parent / "assets"


@dataclass(frozen=True)
class Affine:
    """A model computing y = x @ w + b and label = argmax(y), and the numbers to check it against."""

    path: Path
    model_format: str
    w: np.ndarray
    b: np.ndarray
    label_dtype: str

    def reference(self, x: np.ndarray) -> dict[str, np.ndarray]:
        y = x @ self.w + self.b
        return {"y": y, "label": np.argmax(y, axis=1).astype(self.label_dtype)}

    def expected_outputs(self) -> dict[str, TensorSpec]:
        return {
            "y": TensorSpec(name="y", dtype="float32", shape=[None, self.w.shape[1]]),
            "label": TensorSpec(name="label", dtype=self.label_dtype, shape=[None]),
        }


@pytest.fixture(scope="session")
def onnx_affine(tmp_path_factory: pytest.TempPathFactory) -> Affine:
    rng = np.random.default_rng(11)
    w = rng.standard_normal((4, 3)).astype(np.float32)
    b = rng.standard_normal(3).astype(np.float32)
    path = affine_model(tmp_path_factory.mktemp("onnx-affine") / "affine.onnx", w, b)
    return Affine(path, "onnx", w, b, "int64")


@pytest.fixture(scope="session")
def tflite_affine() -> Affine:
    """Made by scripts/make_tflite_fixture.py (TensorFlow cannot be installed beside this project)."""
    recorded = np.load(ASSETS / "affine.npz")
    return Affine(ASSETS / "affine.tflite", "tflite", recorded["w"], recorded["b"], "int32")


def _options(tmp_path: Path, model: Path) -> RuntimeOptions:
    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    return RuntimeOptions(cache_dir=tmp_path / "cache", model_digest=digest)


def _batch(rows: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, 4)).astype(np.float32)


class RuntimeContract:
    """What every backend promises. A subclass provides ``runtime_key`` and ``affine`` (the model to load)."""

    atol: ClassVar[float] = 1e-5  # GPU subclasses loosen it: ONNX Runtime's CUDA matmuls may use TF32

    @pytest.fixture
    def runtime_key(self) -> str:
        raise NotImplementedError

    @pytest.fixture
    def affine(self) -> Affine:
        raise NotImplementedError

    @pytest.fixture(autouse=True)
    def _usable_here(self, runtime_key: str, affine: Affine) -> None:
        reason = skip_reason(runtime_key, affine.model_format)
        if reason is not None:
            pytest.skip(reason)

    @pytest.fixture
    def runtime(self, runtime_key: str, affine: Affine, tmp_path: Path) -> Iterator[Runtime]:
        runtime = RUNTIMES[runtime_key](affine.path, _options(tmp_path, affine.path))
        yield runtime
        runtime.close()

    def check(self, affine: Affine, x: np.ndarray, got: dict[str, np.ndarray], names: list[str]) -> None:
        want = affine.reference(x)
        assert sorted(got) == sorted(names)
        for name in names:
            assert got[name].dtype == want[name].dtype, name
            assert got[name].shape == want[name].shape, name
        if "y" in names:
            np.testing.assert_allclose(got["y"], want["y"], rtol=self.atol, atol=self.atol)
        if "label" in names:
            np.testing.assert_array_equal(got["label"], want["label"])

    def test_describes_the_model(self, runtime: Runtime, affine: Affine) -> None:
        # Prepare / Execute: loading happened in the fixture.
        outputs = {spec.name: spec for spec in runtime.outputs}

        # Assert
        assert runtime.inputs == [TensorSpec(name="x", dtype="float32", shape=[None, 4])]
        assert outputs == affine.expected_outputs()

    @pytest.mark.parametrize("rows", [1, 4])
    def test_matches_the_reference(self, runtime: Runtime, affine: Affine, rows: int) -> None:
        x = _batch(rows, seed=rows)

        got = runtime.run({"x": x}, ["y", "label"])

        self.check(affine, x, got, ["y", "label"])

    def test_batch_size_changes_between_calls(self, runtime: Runtime, affine: Affine) -> None:
        batches = [_batch(rows, seed=100 + rows) for rows in (1, 4, 2, 1)]

        results = [runtime.run({"x": x}, ["y", "label"]) for x in batches]

        for x, got in zip(batches, results, strict=True):
            self.check(affine, x, got, ["y", "label"])

    def test_returns_only_the_outputs_asked_for(self, runtime: Runtime, affine: Affine) -> None:
        x = _batch(3, seed=5)

        only_label = runtime.run({"x": x}, ["label"])
        only_y = runtime.run({"x": x}, ["y"])

        self.check(affine, x, only_label, ["label"])
        self.check(affine, x, only_y, ["y"])

    def test_concurrent_calls_each_get_their_own_results(self, runtime: Runtime, affine: Affine) -> None:
        # Different batch sizes per thread, so backends that resize tensors do it under contention.
        inputs = [_batch(1 + i % 4, seed=200 + i) for i in range(8)]
        start = threading.Barrier(len(inputs))

        def work(x: np.ndarray) -> list[dict[str, np.ndarray]]:
            start.wait(timeout=10)
            return [runtime.run({"x": x}, ["y", "label"]) for _ in range(25)]

        with ThreadPoolExecutor(max_workers=len(inputs)) as pool:
            results = list(pool.map(work, inputs))

        for x, runs in zip(inputs, results, strict=True):
            for got in runs:
                self.check(affine, x, got, ["y", "label"])

    def test_corrupt_model_fails_to_load(self, runtime_key: str, affine: Affine, tmp_path: Path) -> None:
        broken = tmp_path / f"broken.{affine.model_format}"
        broken.write_bytes(affine.path.read_bytes()[:40] + b"\x00garbage" * 8)

        with pytest.raises(RuntimeError, match=f"no runtime could load the model: {runtime_key}: failed to load"):
            open_runtime([runtime_key], affine.model_format, broken, _options(tmp_path, broken))


class TestOnnxCpu(RuntimeContract):
    @pytest.fixture
    def runtime_key(self) -> str:
        return "onnxruntime-cpu"

    @pytest.fixture
    def affine(self, onnx_affine: Affine) -> Affine:
        return onnx_affine


class TestOnnxCuda(RuntimeContract):
    atol = 2e-3

    @pytest.fixture
    def runtime_key(self) -> str:
        return "onnxruntime-cuda"

    @pytest.fixture
    def affine(self, onnx_affine: Affine) -> Affine:
        return onnx_affine


class TestOnnxTensorrt(RuntimeContract):
    atol = 2e-3

    @pytest.fixture
    def runtime_key(self) -> str:
        return "onnxruntime-tensorrt"

    @pytest.fixture
    def affine(self, onnx_affine: Affine) -> Affine:
        return onnx_affine


class TestLitert(RuntimeContract):
    @pytest.fixture
    def runtime_key(self) -> str:
        return "litert"

    @pytest.fixture
    def affine(self, tflite_affine: Affine) -> Affine:
        return tflite_affine

    def test_gives_the_outputs_recorded_when_the_asset_was_made(self, runtime: Runtime) -> None:
        recorded = np.load(ASSETS / "affine.npz")

        got = runtime.run({"x": recorded["x"]}, ["y", "label"])

        np.testing.assert_allclose(got["y"], recorded["y"], rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(got["label"], recorded["label"])


class TestTensorrtNative(RuntimeContract):
    atol = 2e-3

    @pytest.fixture
    def runtime_key(self) -> str:
        return "tensorrt"

    @pytest.fixture
    def affine(self, onnx_affine: Affine) -> Affine:
        return onnx_affine

    def test_second_load_uses_the_cached_engine(self, runtime: Runtime, affine: Affine, tmp_path: Path) -> None:
        engines = list((tmp_path / "cache" / "trt-native").glob("*.engine"))
        assert len(engines) == 1
        written = engines[0].stat().st_mtime_ns
        x = _batch(2, seed=3)

        again = RUNTIMES["tensorrt"](affine.path, _options(tmp_path, affine.path))
        got = again.run({"x": x}, ["y", "label"])
        again.close()

        assert list((tmp_path / "cache" / "trt-native").glob("*.engine")) == engines
        assert engines[0].stat().st_mtime_ns == written  # deserialized, not rebuilt and rewritten
        self.check(affine, x, got, ["y", "label"])


# The chain: which backend serves, and why the others were passed over.


def test_chain_falls_back_to_the_cpu_and_says_why(onnx_affine: Affine, tmp_path: Path) -> None:
    cuda_reason = skip_reason("onnxruntime-cuda", "onnx")
    if cuda_reason is None:
        pytest.skip("onnxruntime-cuda is usable on this machine, so the chain does not fall back")

    runtime, skipped = open_runtime(
        ["onnxruntime-cuda", "onnxruntime-cpu"], "onnx", onnx_affine.path, _options(tmp_path, onnx_affine.path)
    )

    assert runtime.key == "onnxruntime-cpu"
    assert skipped == [cuda_reason]
    assert skipped[0].startswith("onnxruntime-cuda: ")


def test_chain_of_unusable_backends_lists_every_reason(onnx_affine: Affine, tmp_path: Path) -> None:
    chain = ["onnxruntime-cuda", "onnxruntime-tensorrt", "tensorrt", "litert", "no-such-runtime"]
    reasons = [skip_reason(key, "onnx") for key in chain]
    if None in reasons:
        pytest.skip(f"{chain[reasons.index(None)]} is usable on this machine")

    with pytest.raises(RuntimeError) as raised:
        open_runtime(chain, "onnx", onnx_affine.path, _options(tmp_path, onnx_affine.path))

    assert str(raised.value) == "no runtime could load the model: " + "; ".join(str(r) for r in reasons)
    assert "litert: does not load onnx models" in str(raised.value)
    assert "no-such-runtime: unknown runtime" in str(raised.value)


def test_format_that_no_backend_in_the_chain_loads_is_reported(tflite_affine: Affine, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="onnxruntime-cpu: does not load tflite models"):
        open_runtime(["onnxruntime-cpu"], "tflite", tflite_affine.path, _options(tmp_path, tflite_affine.path))


def test_gpu_backend_refuses_a_silent_fallback_to_the_cpu(onnx_affine: Affine, tmp_path: Path) -> None:
    # ONNX Runtime drops to the CPU when a GPU provider cannot start; a subclass asking for the CPU
    # provider only causes exactly that session, with no GPU needed.
    class CudaThatFellBack(OnnxCudaRuntime):
        def providers(self, options: RuntimeOptions) -> list[str | tuple[str, dict[str, str]]]:
            return ["CPUExecutionProvider"]

    with pytest.raises(ProviderNotActiveError, match="CUDAExecutionProvider not active") as raised:
        CudaThatFellBack(onnx_affine.path, _options(tmp_path, onnx_affine.path))

    assert raised.value.active == ["CPUExecutionProvider"]


@pytest.mark.parametrize(
    ("precision", "flag"), [("fp32", None), ("fp16", "trt_fp16_enable"), ("int8", "trt_int8_enable")]
)
def test_tensorrt_provider_caches_engines_and_asks_for_the_precision(
    tmp_path: Path, precision: Literal["fp32", "fp16", "int8"], flag: str | None
) -> None:
    options = RuntimeOptions(cache_dir=tmp_path / "cache", precision=precision)

    # providers() reads only the options, so it can be checked without a GPU to create a session on.
    providers = OnnxTensorrtRuntime.providers(object.__new__(OnnxTensorrtRuntime), options)

    assert isinstance(providers[0], tuple)
    name, settings = providers[0]
    assert name == "TensorrtExecutionProvider"
    assert providers[1:] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert settings["trt_engine_cache_enable"] == "True"
    assert Path(settings["trt_engine_cache_path"]) == tmp_path / "cache" / "trt"
    assert (tmp_path / "cache" / "trt").is_dir()
    assert {k for k in settings if k in ("trt_fp16_enable", "trt_int8_enable")} == ({flag} if flag else set())


def test_a_fixed_batch_litert_model_is_served_at_any_batch_size(tmp_path: Path) -> None:
    # Prepare: litert-torch's export of the same affine model, with its input fixed to [1, 4]
    # (made with the export environment of scripts/make_tflite_env.sh; litert-torch converts fixed shapes only)
    if (reason := skip_reason("litert", "tflite")) is not None:
        pytest.skip(reason)
    recorded = np.load(ASSETS / "affine.npz")
    path = ASSETS / "affine_batch1.tflite"
    runtime, _ = open_runtime(["litert"], "tflite", path, _options(tmp_path, path))
    (name,) = [spec.name for spec in runtime.inputs]
    (output,) = [spec.name for spec in runtime.outputs]
    # Assert: it declares a dynamic batch, and any batch gives the rows' own results
    assert runtime.inputs[0].shape == [None, 4] and runtime.outputs[0].shape == [None, 3]
    for rows in (1, 5):
        x = _batch(rows, seed=rows)
        got = runtime.run({name: x}, [output])[output]
        np.testing.assert_allclose(got, x @ recorded["w"] + recorded["b"], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="at least 1"):
        runtime.run({name: np.zeros((0, 4), np.float32)}, [output])
