"""The `edgefleet` command in scripts: JSON errors under --format json, exit 5 for a missing file, a fast
start-up that loads only what a command needs, and `coordinator validate-config`."""

from __future__ import annotations

import inspect
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgefleet.cli.main import AREAS, app, load_area
from edgefleet.common.exit_codes import ExitCode

runner = CliRunner(mix_stderr=False)

# What a command that does not need them must not import (sys.modules after start-up).
HEAVY = ("numpy", "grpc", "onnxruntime", "httpx", "torch", "cryptography", "pydantic", "fastapi", "uvicorn")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _error(result) -> dict:  # type: ignore[no-untyped-def]
    """The one JSON object a command that failed under --format json wrote to stderr."""
    assert result.stdout == "", result.stdout
    error = json.loads(result.stderr)
    assert isinstance(error, dict) and error["exit_code"] == result.exit_code, result.stderr
    return error


# -- errors under --format json ---------------------------------------------------------


def test_an_unreachable_coordinator_under_format_json_is_one_json_object_on_stderr() -> None:
    url = f"http://127.0.0.1:{_free_port()}"
    result = runner.invoke(app, ["rollout", "list", "--url", url, "--format", "json"])
    assert result.exit_code == ExitCode.UNREACHABLE
    error = _error(result)
    assert set(error) == {"error", "exit_code"} and error["error"].startswith(f"{url}: cannot reach the coordinator")

    table = runner.invoke(app, ["rollout", "list", "--url", url])  # the format is not left over from the last run
    assert table.exit_code == ExitCode.UNREACHABLE and table.stdout == ""
    assert table.stderr.startswith("error: ") and "cannot reach the coordinator" in table.stderr


def test_every_kind_of_command_fails_in_json_without_changing_its_call_of_fail(tmp_path: Path) -> None:
    # keys generate (cli/bundle.py) calls fail() as it always has; the format reaches it all the same.
    assert runner.invoke(app, ["keys", "generate", "--out", str(tmp_path / "k"), "--format", "json"]).exit_code == 0
    again = runner.invoke(app, ["keys", "generate", "--out", str(tmp_path / "k"), "--format", "json"])
    assert again.exit_code == ExitCode.USAGE and "--force" in _error(again)["error"]
    bad = runner.invoke(app, ["coordinator", "enroll-token", "--device-class", "rpi4", "--ttl", "soon",
                              "--format", "json"])  # fmt: skip
    assert bad.exit_code == ExitCode.USAGE and "is not a duration" in _error(bad)["error"]


def test_the_console_script_writes_json_errors_and_keeps_stdout_empty(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{_free_port()}"
    result = subprocess.run(
        [sys.executable, "-m", "edgefleet", "coordinator", "devices", "--format", "json", "--url", url],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == ExitCode.UNREACHABLE and result.stdout == ""
    assert json.loads(result.stderr) == {"error": json.loads(result.stderr)["error"], "exit_code": 6}


# -- a missing file is NOT_FOUND --------------------------------------------------------


COMPRESS = ["compress", "m.onnx", "--data", "d.npz", "--metric", "accuracy", "--name", "n", "--version", "1"]


@pytest.mark.parametrize(
    "args",
    [
        ["coordinator", "upload", "{missing}"],
        ["coordinator", "validate-config", "{missing}"],
        ["campaign", "create", "{missing}", "--url", "http://127.0.0.1:9"],
        [*COMPRESS, "--key", "{missing}"],
        [*COMPRESS, "--preprocessing", "{missing}"],
    ],
    ids=["upload", "validate-config", "campaign-create", "compress-key", "compress-preprocessing"],
)
def test_a_missing_file_exits_5_and_says_so(tmp_path: Path, args: list[str]) -> None:
    missing = str(tmp_path / "nope.file")
    argv = [a.replace("{missing}", missing) for a in args]
    result = runner.invoke(app, argv)
    assert result.exit_code == ExitCode.NOT_FOUND, result.stderr
    assert f"{missing}: no such file" in result.stderr.replace("\n", "")  # rich wraps a long path
    # --format json before or after the path: the error is JSON either way (the format is parsed first).
    for placed in ([*argv, "--format", "json"], [*argv[:2], "--format", "json", *argv[2:]]):
        result = runner.invoke(app, placed)
        assert result.exit_code == ExitCode.NOT_FOUND
        assert _error(result) == {"error": f"{missing}: no such file", "exit_code": 5}


def test_a_folder_where_a_file_belongs_is_still_a_usage_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["coordinator", "upload", str(tmp_path)])
    assert result.exit_code == ExitCode.USAGE and "Error" in result.stderr  # typer's, in a box that wraps the path


# -- start-up ---------------------------------------------------------------------------


def _loaded_after(code: str) -> list[str]:
    probe = f"import sys\n{code}\nprint(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return list(json.loads(done.stdout.strip().splitlines()[-1].replace("'", '"')))


def _as_the_console_script(*argv: str) -> str:
    """Python that runs `edgefleet ARGV...` as the console script does, and goes on after it exits."""
    lines = ["from edgefleet.launch import main", f"sys.argv = {['edgefleet', *argv]!r}", "try:", "    main()",
             "except SystemExit:", "    pass"]  # fmt: skip
    return "\n".join(lines)


def test_the_cli_and_its_help_load_no_heavy_module() -> None:
    assert _loaded_after("import edgefleet.cli.main") == []
    assert _loaded_after(_as_the_console_script("--help")) == []


def test_a_rest_command_loads_no_other_area() -> None:
    run = _as_the_console_script("rollout", "list", "--url", "http://127.0.0.1:9")
    run += "\nassert 'edgefleet.cli.agent' not in sys.modules and 'edgefleet.cli.bundle' not in sys.modules"
    assert _loaded_after(run) == []


@pytest.mark.parametrize("name", list(AREAS))
def test_each_area_listed_by_help_is_the_command_it_loads(name: str) -> None:
    command = load_area(name)
    assert command.name == name
    first_paragraph = inspect.cleandoc(command.help or "").split("\n\n")[0]
    assert " ".join(first_paragraph.split()) == AREAS[name].help


def test_every_area_runs_its_help_through_the_lazy_root() -> None:
    listed = runner.invoke(app, ["--help"])
    assert listed.exit_code == 0 and all(name in listed.stdout for name in [*AREAS, "demo"])
    for name in AREAS:
        result = runner.invoke(app, [name, "--help"])
        assert result.exit_code == 0 and "Usage:" in result.stdout, (name, result.stderr)


# -- coordinator validate-config --------------------------------------------------------


def test_coordinator_validate_config_prints_each_problem_and_exits_3(tmp_path: Path) -> None:
    path = tmp_path / "coordinator.toml"
    path.write_text('data_dir = "d"\ntrusted_keys = []\nfrobnicate = 1\n[api]\nport = 99999\ntoken = "sekrit"\n')
    result = runner.invoke(app, ["coordinator", "validate-config", str(path)])
    assert result.exit_code == ExitCode.CONFIG_INVALID and result.stdout == ""
    problems = (
        "trusted_keys: List should have at least 1 item",
        "api.port: Input should be less than",
        "api.token: String should have at least 16",
        "frobnicate: Extra inputs are not permitted",
    )
    for problem in problems:
        assert problem in result.stderr, result.stderr
    assert "sekrit" not in result.stderr  # the file holds tokens and passwords: values are never shown

    as_json = runner.invoke(app, ["coordinator", "validate-config", str(path), "--format", "json"])
    error = _error(as_json)
    assert as_json.exit_code == ExitCode.CONFIG_INVALID and len(error["problems"]) == 4
    assert error["error"] == f"{path}: invalid coordinator config"

    path.write_text('data_dir = "d"\ntrusted_keys = ["k.pub"]\n[api]\nport = 8081\n')
    ok = runner.invoke(app, ["coordinator", "validate-config", str(path)])
    assert ok.exit_code == 0 and ok.stdout.strip() == f"{path}: ok" and ok.stderr == ""
    ok = runner.invoke(app, ["coordinator", "validate-config", str(path), "--format", "json"])
    assert ok.exit_code == 0 and json.loads(ok.stdout) == {"config": str(path), "ok": True}
