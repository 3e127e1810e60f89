"""Regenerate protocol/grpc_gen/ from protocol/proto/*.proto with the pinned grpcio-tools.

Usage: python scripts/gen_grpc.py [OUT_DIR]   (default: this checkout; writes protocol/grpc_gen there)

The generated modules import each other as ``edgefleet.protocol.grpc_gen`` (the installed name of
protocol/grpc_gen), so protoc sees the proto folder under that virtual path.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
VIRTUAL = "edgefleet/protocol/grpc_gen"


def generate(out_root: Path) -> None:
    out = out_root / "protocol" / "grpc_gen"
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for proto in sorted((ROOT / "protocol" / "proto").glob("*.proto")):
            args = [
                "protoc",
                f"-I{VIRTUAL}={ROOT / 'protocol' / 'proto'}",
                f"--python_out={tmp}",
                f"--pyi_out={tmp}",
                f"--grpc_python_out={tmp}",
                f"{VIRTUAL}/{proto.name}",
            ]
            if protoc.main(args) != 0:
                raise SystemExit(f"protoc failed on {proto}")
        for generated in sorted((Path(tmp) / VIRTUAL).iterdir()):
            shutil.copyfile(generated, out / generated.name)


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT)
