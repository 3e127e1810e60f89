"""Validation, training and calibration data for the compressor: loading and checking against the model.

The data is a mapping of arrays, from an ``.npz`` file or returned by a Python callable
(``pkg.module:fn``, called without arguments). Keys:

- ``x``: validation inputs of a single-input model, or ``x.<input name>`` for each input of a
  model with several (e.g. ``x.input_ids`` and ``x.attention_mask``). Required.
- ``y``: validation labels: integer classes (``accuracy``) or target values (``mse``).
  Not needed for ``cosine``.
- ``x_train`` / ``x_train.<input name>`` and ``y_train``: training rows, used by pruning
  fine-tuning and by distillation. Optional; without them pruning is not fine-tuned and
  distillation is not built.
- ``x_calib`` / ``x_calib.<input name>``: calibration rows for static INT8. Optional; the
  training rows serve, else the validation rows (which then also judge the result: say so).

A callable may also return a ``EvalData`` directly.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgefleet.compression.errors import DataError
from edgefleet.protocol.tensors import TensorSpec

__all__ = ["EvalData", "data_from_mapping", "input_names_in", "load_data", "resolve_import"]

SPLITS = {"x": "validation", "x_train": "training", "x_calib": "calibration"}


@dataclass
class EvalData:
    """Arrays keyed by model input name; ``inputs`` and ``labels`` are the validation rows."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None = None
    train_inputs: dict[str, np.ndarray] | None = None
    train_labels: np.ndarray | None = None
    calib_inputs: dict[str, np.ndarray] | None = None

    @property
    def rows(self) -> int:
        return len(next(iter(self.inputs.values())))

    def calibration(self) -> tuple[dict[str, np.ndarray], str]:
        """The rows static quantization calibrates on, and which split they come from."""
        if self.calib_inputs is not None:
            return self.calib_inputs, "calibration"
        if self.train_inputs is not None:
            return self.train_inputs, "training"
        return self.inputs, "validation"

    def head(self, rows: int) -> dict[str, np.ndarray]:
        return {name: array[:rows] for name, array in self.inputs.items()}


def resolve_import(path: str) -> object:
    """Import ``pkg.module:attr`` and return the attribute.

    The current directory is searched too (as ``python -m`` would), so a project's own modules
    resolve when ``edgefleet`` runs from its root.
    """
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"{path!r} is not an import path of the form pkg.module:name")
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)
    module = importlib.import_module(module_name)
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ValueError(f"module {module_name!r} has no attribute {attr!r}") from None


def input_names_in(raw: Mapping[str, np.ndarray]) -> list[str] | None:
    """Input names the data spells out (``x.<name>`` keys), in key order, or None for a bare ``x``."""
    names = [key[2:] for key in raw if key.startswith("x.")]
    return names or None


def load_data(source: str | Path | Mapping[str, np.ndarray] | EvalData) -> Mapping[str, np.ndarray] | EvalData:
    """Read an ``.npz`` file or call ``pkg.module:fn``; return the raw mapping (checked later)."""
    if isinstance(source, EvalData | Mapping):
        return source
    text = str(source)
    if Path(text).is_file() or text.endswith(".npz"):
        path = Path(text)
        if not path.is_file():
            raise DataError(f"data file {path} does not exist")
        try:
            with np.load(path, allow_pickle=False) as npz:
                return {key: npz[key] for key in npz.files}
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: not a readable .npz file ({exc})") from None
    try:
        fn = resolve_import(text)
    except (ImportError, ValueError) as exc:
        raise DataError(f"data {text!r}: neither an .npz file nor an importable callable ({exc})") from None
    if not callable(fn):
        raise DataError(f"data {text!r} is not callable")
    result = fn()
    if not isinstance(result, EvalData | Mapping):
        raise DataError(f"data callable {text!r} returned {type(result).__name__}; return a dict of arrays")
    return result


def _split(raw: Mapping[str, np.ndarray], prefix: str, specs: list[TensorSpec]) -> dict[str, np.ndarray] | None:
    names = [s.name for s in specs]
    if prefix in raw:
        if len(specs) != 1:
            raise DataError(
                f"{prefix!r} holds one array but the model has inputs {names}; "
                f"name each as {', '.join(f'{prefix}.{n}' for n in names)}"
            )
        return {names[0]: np.asarray(raw[prefix])}
    named = {key[len(prefix) + 1 :]: np.asarray(v) for key, v in raw.items() if key.startswith(prefix + ".")}
    if not named:
        return None
    missing = sorted(set(names) - set(named))
    unknown = sorted(set(named) - set(names))
    if missing or unknown:
        raise DataError(f"{SPLITS[prefix]} data names inputs {sorted(named)}; the model has {names}")
    return {n: named[n] for n in names}


def _check(split: str, arrays: dict[str, np.ndarray], specs: list[TensorSpec]) -> dict[str, np.ndarray]:
    """Match dtype kind and shape to the specs (casting float64 -> float32 and the like); raise DataError."""
    out = {}
    rows = None
    for spec in specs:
        array = arrays[spec.name]
        want = np.dtype(spec.dtype)
        if array.dtype != want:
            same_kind = (array.dtype.kind in "iu" and want.kind in "iu") or (array.dtype.kind == want.kind == "f")
            if not same_kind:
                raise DataError(
                    f"{split} data for input {spec.name!r}: dtype {array.dtype}, the model expects {spec.dtype}"
                )
            array = array.astype(want)
        expected = ["N" if d is None else d for d in spec.shape]
        fits = array.ndim == len(spec.shape) and all(d is None or array.shape[i] == d for i, d in enumerate(spec.shape))
        if not fits:
            raise DataError(
                f"{split} data for input {spec.name!r} has shape {list(array.shape)}; "
                f"the model expects {expected} (first dimension: rows)"
            )
        if rows is not None and len(array) != rows:
            raise DataError(f"{split} data: inputs have different row counts ({rows} and {len(array)})")
        rows = len(array)
        out[spec.name] = array
    if not rows:
        raise DataError(f"{split} data has no rows")
    return out


def data_from_mapping(raw: Mapping[str, np.ndarray] | EvalData, specs: list[TensorSpec]) -> EvalData:
    """Build and check the data against the model's input specs."""
    if isinstance(raw, EvalData):
        raw = _flatten(raw)
    known = {"y", "y_train"}
    unknown = [k for k in raw if k not in known and k.split(".", 1)[0] not in SPLITS]
    if unknown:
        raise DataError(f"unknown data keys {unknown}; expected x[.<input>], y, x_train[.<input>], y_train, x_calib")
    splits: dict[str, dict[str, np.ndarray] | None] = {}
    for prefix, split in SPLITS.items():
        arrays = _split(raw, prefix, specs)
        splits[prefix] = None if arrays is None else _check(split, arrays, specs)
    validation = splits["x"]
    if validation is None:
        raise DataError("no validation inputs: the data needs 'x' (or 'x.<input name>' per input)")
    labels = np.asarray(raw["y"]) if "y" in raw else None
    train_labels = np.asarray(raw["y_train"]) if "y_train" in raw else None
    rows = len(next(iter(validation.values())))
    if labels is not None and len(labels) != rows:
        raise DataError(f"'y' has {len(labels)} rows, the validation inputs {rows}")
    train = splits["x_train"]
    if train_labels is not None and (train is None or len(train_labels) != len(next(iter(train.values())))):
        raise DataError("'y_train' needs 'x_train' with the same number of rows")
    return EvalData(validation, labels, train, train_labels, splits["x_calib"])


def _flatten(data: EvalData) -> dict[str, np.ndarray]:
    raw: dict[str, np.ndarray] = {}
    for prefix, arrays in (("x", data.inputs), ("x_train", data.train_inputs), ("x_calib", data.calib_inputs)):
        for name, array in (arrays or {}).items():
            raw[f"{prefix}.{name}"] = array
    if data.labels is not None:
        raw["y"] = data.labels
    if data.train_labels is not None:
        raw["y_train"] = data.train_labels
    return raw
