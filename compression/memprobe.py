"""Peak memory of loading and running one model, measured in a fresh process.

``python -m compression.memprobe FORMAT MODEL FEEDS.npz THREADS`` loads MODEL on the agent's runtime
for FORMAT, runs each batch in FEEDS (keys ``<batch>/<input name>``) once, and prints JSON:
``rss_base_mb`` (after importing the runtime), ``rss_end_mb``, ``peak_mb`` (the kernel's high-water
mark, reset after the imports) and ``delta_mb``: peak RSS minus RSS after imports, i.e. what loading
and running the model costs on top of the runtime library.
"""

from __future__ import annotations

import contextlib
import json
import resource
import sys
from pathlib import Path

__all__ = ["main"]

MiB = 1024 * 1024


def _reset_peak() -> None:
    """Reset the kernel's RSS high-water mark (Linux >= 4.0) so imports do not count in the peak."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def _peak_bytes() -> int:
    """VmHWM from /proc (per process image, unlike ru_maxrss, which keeps the forking parent's peak)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


def main(argv: list[str]) -> int:
    import numpy as np
    import psutil

    from edgefleet.agent.runtimes import RuntimeOptions, backend

    model_format, model_path, feeds_path, threads = argv[0], Path(argv[1]), Path(argv[2]), int(argv[3])
    key = "litert" if model_format == "tflite" else "onnxruntime-cpu"
    cls = backend(key)
    if cls is None:
        print(json.dumps({"error": f"{key} is not available"}))
        return 1
    with np.load(feeds_path) as npz:
        batches: dict[str, dict[str, np.ndarray]] = {}
        for name in npz.files:
            batch, _, input_name = name.partition("/")
            batches.setdefault(batch, {})[input_name] = npz[name]
    process = psutil.Process()
    base = process.memory_info().rss
    _reset_peak()
    runtime = cls(model_path, RuntimeOptions(intra_op_threads=threads, inter_op_threads=1))
    outputs = [spec.name for spec in runtime.outputs]
    for feeds in batches.values():
        runtime.run(feeds, outputs)
    end = process.memory_info().rss
    peak = _peak_bytes()
    print(
        json.dumps(
            {
                "rss_base_mb": base / MiB,
                "rss_end_mb": end / MiB,
                "peak_mb": peak / MiB,
                "delta_mb": (max(peak, end) - base) / MiB,
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
