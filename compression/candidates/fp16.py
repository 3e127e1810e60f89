"""FP16 candidate for GPU classes, with the converter that ships inside ONNX Runtime.

Inputs and outputs stay FP32 (``keep_io_types``), so apps and test vectors do not change.
"""

from __future__ import annotations

from pathlib import Path

import onnx

from edgefleet.compression.candidates.base import BuildContext, Candidate, already_quantized, technique, tool_version

__all__ = ["fp16"]


@technique("fp16")
def fp16(ctx: BuildContext) -> list[Candidate]:
    skipped = already_quantized(ctx, ["fp16"], "fp16", "fp16")
    if skipped is not None:
        return skipped

    def make(out: Path) -> None:
        from onnxruntime.transformers.float16 import convert_float_to_float16

        model = convert_float_to_float16(onnx.load(str(ctx.reference.onnx_path)), keep_io_types=True)
        onnx.save(model, str(out))

    return [
        Candidate(
            "fp16",
            "fp16",
            "fp16",
            "onnx",
            frozenset({"gpu"}),
            params={"keep_io_types": True, "converter": "onnxruntime.transformers.float16"},
            tool=tool_version("onnxruntime"),
            make=make,
        )
    ]
