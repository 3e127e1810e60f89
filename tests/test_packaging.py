"""What the project declares: a lean core install for devices, heavy parts in extras."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!\[; ]", r, maxsplit=1)[0].lower() for r in requirements}


def test_the_agent_core_install_pulls_no_training_stack() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = _names(project["dependencies"])
    assert not core & {"torch", "flwr", "opacus", "tensorflow", "jax"}
    assert {"onnxruntime", "paho-mqtt", "grpcio", "pydantic", "cryptography"} <= core
    extras = project["optional-dependencies"]
    assert "torch==2.13.0" in extras["compression"], "torch pinned to the CPU build on disk"
    assert {"tflite", "tensorrt", "dev", "federated"} <= set(extras)


def test_agent_modules_import_without_the_coordinator_or_training_extras() -> None:
    import subprocess
    import sys

    code = (
        "import sys, edgefleet.agent.daemon, edgefleet.cli.agent, edgefleet.protocol.bundle;"
        "bad = {'torch', 'flwr', 'opacus', 'fastapi', 'sqlite_utils'} & set(sys.modules);"
        "print(sorted(bad)); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_core_install_cli_talks_to_a_coordinator_without_the_coordinator_extra() -> None:
    """`rollout ...`, `campaign ...`, `coordinator devices` on a device (the .deb) need no httpx or FastAPI."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "for name in ('httpx', 'fastapi', 'uvicorn', 'sqlite_utils', 'torch', 'flwr'): sys.modules[name] = None\n"
        "from edgefleet.cli.main import app\n"
        "sys.argv = ['edgefleet', 'rollout', 'list', '--url', 'http://127.0.0.1:9']\n"
        "app()\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 6, result.stdout + result.stderr  # unreachable, said as such: no ImportError
    assert "cannot reach the coordinator" in result.stderr and "Traceback" not in result.stderr
