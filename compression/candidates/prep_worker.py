"""ONNX Runtime's quantization pre-processing, run in a child process whose current directory is the run's
own work folder.

When its symbolic shape inference is incomplete, ONNX Runtime saves ``sym_shape_infer_temp.onnx`` and a
``<uuid>.data`` file (the model's weights: tens of MB) to the *current directory* before it raises. A
child started with ``cwd=`` keeps them in the work folder, which the run removes, and the caller never
changes directory. The pre-processing is then retried without symbolic shapes (ONNX's shape inference
and ORT's basic optimisations still apply).

    python -m edgefleet.compression.candidates.prep_worker SOURCE.onnx OUT.onnx

prints one JSON line: ``{"symbolic_shapes": true}``, or ``false`` with the ``error`` that stopped it;
on a failure of both, ``{"error": ...}`` and exit status 1.
"""

from __future__ import annotations

import json
import logging
import sys


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:300] if text else ''}"


def main(argv: list[str]) -> int:
    from onnxruntime.quantization.shape_inference import quant_pre_process

    logging.basicConfig(level=logging.ERROR)
    source, out = argv
    try:
        quant_pre_process(source, out)
    except Exception as exc:
        symbolic = _first_line(exc)
        try:
            quant_pre_process(source, out, skip_symbolic_shape=True)
        except Exception as again:
            print(json.dumps({"error": f"{symbolic}; without symbolic shapes: {_first_line(again)}"}))
            return 1
        print(json.dumps({"symbolic_shapes": False, "error": symbolic}))
        return 0
    print(json.dumps({"symbolic_shapes": True}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
