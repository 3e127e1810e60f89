"""The committed gRPC code is what the pinned generator makes from the committed .proto."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(importlib.util.find_spec("grpc_tools") is None, reason="grpcio-tools (dev extra) not installed")
def test_generated_code_is_up_to_date(tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_grpc.py"), str(tmp_path)], check=True, timeout=120)
    for generated in sorted((tmp_path / "protocol" / "grpc_gen").iterdir()):
        committed = ROOT / "protocol" / "grpc_gen" / generated.name
        assert committed.read_text() == generated.read_text(), f"{committed} is stale: run python scripts/gen_grpc.py"
