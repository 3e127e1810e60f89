"""A TensorRT engine built from the FP32 ONNX model where a CUDA GPU and ``tensorrt`` are present.

An engine is specific to one GPU and TensorRT version, so it is never shipped in a bundle: the agent
builds and caches its own from the ONNX bundle on the device. Here it is built to show the model
parses and builds, and listed as not built, with the reason, where it cannot be.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from edgefleet.agent.runtimes.onnx_gpu import nvidia_device_reason
from edgefleet.compression.candidates.base import BuildContext, Candidate, not_built, technique, tool_version

__all__ = ["tensorrt_engine", "unavailable_reason"]


def unavailable_reason() -> str | None:
    missing = []
    no_gpu = nvidia_device_reason()  # the agent's rule: a Jetson's integrated GPU counts
    if no_gpu:
        missing.append(no_gpu)
    if importlib.util.find_spec("tensorrt") is None:
        missing.append("tensorrt not installed")
    return " / ".join(missing) or None


def _build_engine(onnx_path: Path, out: Path) -> None:
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT cannot parse the model: {errors}")
    config = builder.create_builder_config()
    if hasattr(trt.BuilderFlag, "FP16"):
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        shape = list(tensor.shape)
        lo, opt, hi = (
            [1 if d < 0 else d for d in shape],
            [8 if d < 0 else d for d in shape],
            [32 if d < 0 else d for d in shape],
        )
        profile.set_shape(tensor.name, lo, opt, hi)
    config.add_optimization_profile(profile)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise RuntimeError("TensorRT failed to build the engine")
    out.write_bytes(bytes(engine))


@technique("tensorrt")
def tensorrt_engine(ctx: BuildContext) -> list[Candidate]:
    reason = unavailable_reason()
    if reason is not None:
        return [not_built("tensorrt-fp16", "tensorrt", "fp16", "engine", reason)]
    return [
        Candidate(
            "tensorrt-fp16",
            "tensorrt",
            "fp16",
            "engine",
            frozenset({"gpu"}),
            {"note": "build check only; the agent builds its own engine on the device"},
            tool_version("tensorrt"),
            lambda out: _build_engine(ctx.reference.onnx_path, out),
        )
    ]
