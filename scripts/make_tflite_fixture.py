"""Build tests/assets/affine.tflite and affine.npz: the LiteRT contract-test model and its reference numbers.

The committed files were made exactly like this, on x86_64 with Python 3.11:

    python -m venv /tmp/tfvenv
    /tmp/tfvenv/bin/pip install tensorflow-cpu==2.21.0
    /tmp/tfvenv/bin/python scripts/make_tflite_fixture.py

The model: x float32[batch, 4] -> y = x @ W + b (float32[batch, 3]) and label = argmax(y, axis 1)
(int32[batch]); the batch dimension is dynamic (-1 in the shape signature). W and b come from a
seeded generator and are stored in affine.npz with a batch-4 input and its expected outputs
(computed with numpy, then checked against the converted model before anything is written).

Why TensorFlow and not litert-torch: litert-torch 0.10 converts fixed shapes only (its JAX lowering
crashes on a dynamic batch; google-ai-edge/litert-torch#870), and the contract tests need a dynamic
batch. TensorFlow pulls protobuf 7, which the project's pins exclude, so it lives in a throwaway venv.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

ASSETS = Path(__file__).resolve().parent.parent / "tests" / "assets"
SEED = 20261123


def build(out_dir: Path) -> None:
    import tensorflow as tf

    rng = np.random.default_rng(SEED)
    w = rng.standard_normal((4, 3)).astype(np.float32)
    b = rng.standard_normal(3).astype(np.float32)
    x = rng.standard_normal((4, 4)).astype(np.float32)

    class Affine(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = tf.constant(w)
            self.b = tf.constant(b)

        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
        def serve(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
            y = tf.matmul(x, self.w) + self.b
            return {"y": y, "label": tf.argmax(y, axis=1, output_type=tf.int32)}

    module = Affine()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([module.serve.get_concrete_function()], module)
    model = converter.convert()

    y = x @ w + b
    label = np.argmax(y, axis=1).astype(np.int32)
    _check(model, x, y, label)

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "affine.tflite").write_bytes(model)
    np.savez(out_dir / "affine.npz", w=w, b=b, x=x, y=y, label=label)
    print(f"wrote {out_dir / 'affine.tflite'} ({len(model)} bytes) and {out_dir / 'affine.npz'}")


def _check(model: bytes, x: np.ndarray, y: np.ndarray, label: np.ndarray) -> None:
    """Run the converted model on the batch-4 input and refuse to write it unless it matches numpy."""
    import tensorflow as tf

    interpreter = tf.lite.Interpreter(model_content=model)
    runner = interpreter.get_signature_runner("serving_default")
    shape = list(runner.get_input_details()["x"]["shape_signature"])
    assert shape == [-1, 4], f"batch dimension is not dynamic: {shape}"
    got = runner(x=x)
    np.testing.assert_allclose(got["y"], y, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got["label"], label)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ASSETS, help="folder to write affine.tflite and affine.npz")
    build(parser.parse_args().out)


if __name__ == "__main__":
    main()
