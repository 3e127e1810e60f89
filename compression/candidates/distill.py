"""Distilled candidates: a smaller student the user names (``pkg.module:fn``), trained on the user's
training rows against the reference model's soft targets (and labels), exported to ONNX, and the
same student with dynamic INT8 on top."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgefleet.compression.candidates.base import BuildContext, Candidate, not_built, technique, tool_version
from edgefleet.compression.training import reference_outputs, train

__all__ = ["distilled"]


def _train_student(ctx: BuildContext, out: Path, candidate: Candidate) -> None:
    import torch

    from edgefleet.compression.export import export_onnx
    from edgefleet.compression.source import load_torch_module

    options = ctx.options
    assert options.student is not None and ctx.data.train_inputs is not None
    student = load_torch_module(options.student)
    teacher = reference_outputs(str(ctx.reference.onnx_path), ctx.data.train_inputs)
    loss = train(
        student,
        ctx.data.train_inputs,
        teacher,
        ctx.data.train_labels,
        task=ctx.metric.name,
        epochs=options.distill_epochs,
        learning_rate=options.learning_rate,
        batch_size=options.batch_size,
        temperature=options.temperature,
        alpha=options.alpha,
        seed=options.seed,
    )
    sample = tuple(torch.from_numpy(np.ascontiguousarray(a[:2])) for a in ctx.data.inputs.values())
    export_onnx(
        student,
        sample,
        out,
        input_names=ctx.reference.input_names,
        output_names=ctx.reference.output_names,
        dynamic_axes=ctx.reference.dynamic_axes,
        opset=options.opset,
    )
    candidate.params.update({"parameters": sum(p.numel() for p in student.parameters()), "final_loss": round(loss, 5)})


@technique("distill")
def distilled(ctx: BuildContext) -> list[Candidate]:
    options = ctx.options
    reason = None
    if options.student is None:
        reason = "no student architecture given (student=pkg.module:fn)"
    elif ctx.data.train_inputs is None:
        reason = "distillation needs training rows (x_train in the data); validation rows only measure"
    if reason is not None:
        return [not_built("distilled", "distilled", "fp32", "onnx", reason)]
    params: dict[str, str | int | float | bool] = {
        "student": options.student or "",
        "epochs": options.distill_epochs,
        "temperature": options.temperature,
        "alpha": options.alpha,
        "learning_rate": options.learning_rate,
    }
    student = Candidate(
        "distilled", "distilled", "fp32", "onnx", frozenset({"cpu", "gpu"}), dict(params), tool_version("torch")
    )
    student.make = lambda out: _train_student(ctx, out, student)
    int8 = Candidate(
        "distilled-int8",
        "distilled",
        "int8",
        "onnx",
        frozenset({"cpu"}),
        {**params, "then": "int8-dynamic per-channel"},
        tool_version("torch", "onnxruntime"),
    )

    def make_int8(out: Path) -> None:
        from edgefleet.compression.candidates.quantize import prepared, quantize_dynamic_file

        if student.path is None:
            raise RuntimeError(f"the student was not built: {student.reason}")
        quantize_dynamic_file(prepared(ctx, student.path), out, per_channel=True, reduce_range=False)
        int8.params.update({k: v for k, v in student.params.items() if k not in params})

    int8.make = make_int8
    return [student, int8]
