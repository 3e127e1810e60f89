"""Regenerate protocol/grpc_gen/ from protocol/proto/*.proto with the pinned grpcio-tools.

Usage: python scripts/gen_grpc.py [OUT_DIR]   (default: protocol/grpc_gen)
"""

from __future__ import annotations

import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent


def generate(out_root: Path) -> None:
    # Map the proto folder to the virtual path protocol/grpc_gen so generated imports are absolute.
    (out_root / "protocol" / "grpc_gen").mkdir(parents=True, exist_ok=True)
    for proto in sorted((ROOT / "protocol" / "proto").glob("*.proto")):
        args = [
            "protoc",
            f"-Iprotocol/grpc_gen={ROOT / 'protocol' / 'proto'}",
            f"--python_out={out_root}",
            f"--pyi_out={out_root}",
            f"--grpc_python_out={out_root}",
            f"protocol/grpc_gen/{proto.name}",
        ]
        if protoc.main(args) != 0:
            raise SystemExit(f"protoc failed on {proto}")


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT)
