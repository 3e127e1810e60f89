"""Screen built candidates before they are measured: one entry per distinct file, none larger than its source.

Two recipes can give byte-identical files (three INT8 variants of a model whose weights the
quantizer leaves alone, say): the first is measured and lists the others in ``same_files``, each
other is a ``duplicate`` pointing at it. A candidate whose file is larger than the reference's
(ONNX Runtime's offline optimisation of an already-INT8 model folds the weights back to FP32) is
``rejected`` unless ``allow_larger``: a compressed model that is bigger is not what was asked for.
A few percent (``SLACK``) are let through: an offline-optimised graph carries a few hundred bytes
of fused-node names more than a small export (10,343 vs 10,087 bytes for a 64-32-10 MLP). An "INT8"
candidate with no INT8 in its file (the quantizer left every weight alone: a GRU, say) is
``rejected`` too: it is the FP32 model under another name.
"""

from __future__ import annotations

import logging

from edgefleet.compression.candidates.base import Candidate
from edgefleet.compression.quantized import quantization_of
from edgefleet.protocol.bundle import sha256_file

__all__ = ["SLACK", "screen_candidates"]

SLACK = 0.05

log = logging.getLogger(__name__)


def screen_candidates(candidates: list[Candidate], *, allow_larger: bool = False) -> list[str]:
    """Mark duplicates and oversized candidates in place (the first, the reference, is kept); return notes."""
    notes: list[str] = []
    first: dict[str, Candidate] = {}
    reference = candidates[0]
    assert reference.path is not None
    source_bytes = reference.path.stat().st_size
    for candidate in candidates:
        if candidate.status != "built" or candidate.path is None:
            continue
        candidate.sha256 = sha256_file(candidate.path)
        earlier = first.get(candidate.sha256)
        if earlier is not None:
            candidate.status = "duplicate"
            candidate.reason = f"byte-identical to {earlier.name} (sha256 {candidate.sha256[:12]})"
            earlier.same_files.append(candidate.name)
            log.info("candidate %s is the same file as %s", candidate.name, earlier.name)
            continue
        first[candidate.sha256] = candidate
        if (
            candidate is not reference
            and candidate.precision == "int8"
            and candidate.model_format == "onnx"
            and quantization_of(candidate.path) is None
        ):
            candidate.status = "rejected"
            candidate.reason = "no INT8 operator or weight in the file: the quantizer left the model in FP32"
            log.info("candidate %s rejected: %s", candidate.name, candidate.reason)
            continue
        size = candidate.path.stat().st_size
        if candidate is not reference and size > source_bytes * (1 + SLACK) and not allow_larger:
            candidate.status = "rejected"
            candidate.reason = (
                f"larger than its source ({size / 1e6:.3f} MB > {source_bytes / 1e6:.3f} MB); "
                "allow_larger (--allow-larger) keeps it"
            )
            log.info("candidate %s rejected: %s", candidate.name, candidate.reason)
    for candidate in first.values():
        if candidate.same_files:
            notes.append(f"{', '.join([candidate.name, *candidate.same_files])} gave the same file")
    return notes
