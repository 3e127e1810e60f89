"""The compressor's exception types; `edgefleet compress` turns them into exit codes."""

from __future__ import annotations

from edgefleet.common.errors import EdgefleetError

__all__ = ["CompressionError", "DataError", "ExportError", "MetricError", "ModelRunError", "ModelSourceError"]


class CompressionError(EdgefleetError):
    """Base class: bad input to the compressor, with the reason a user can act on."""


class ModelSourceError(CompressionError):
    """The reference model cannot be found, imported or loaded."""


class ExportError(CompressionError):
    """The reference PyTorch model does not export to ONNX."""


class DataError(CompressionError):
    """Validation, training or calibration data that is missing or does not fit the model."""


class MetricError(CompressionError):
    """An unknown task metric, or one the data cannot support (e.g. accuracy without labels)."""


class ModelRunError(DataError):
    """The reference model loads but fails when run on the validation data (e.g. token ids past its vocabulary)."""
