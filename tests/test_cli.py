"""The `edgefleet` command as a user runs it: keys, bundles, config validation, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from edgefleet.cli.main import app
from edgefleet.common.exit_codes import ExitCode
from edgefleet.protocol.signing import generate_keypair
from tests.conftest import DigitsModels

runner = CliRunner()


def _ok(*args: str) -> dict:
    result = runner.invoke(app, [*args, "--format", "json"])
    assert result.exit_code == 0, result.output
    return dict(json.loads(result.output))


def test_keys_bundle_create_verify_inspect(tmp_path: Path, digits: DigitsModels) -> None:
    keys = _ok("keys", "generate", "--out", str(tmp_path / "keys"))
    assert (tmp_path / "keys" / "signing.key").stat().st_mode & 0o777 == 0o600
    created = _ok(
        "bundle", "create", str(digits.v1), "--name", "digits", "--version", "1.0.0",
        "--device-class", "rpi4", "--key", keys["private_key"], "--out", str(tmp_path / "d.bundle"),
    )  # fmt: skip
    verified = _ok("bundle", "verify", created["bundle"], "--trusted-key", keys["public_key"])
    assert verified["digest"] == created["digest"] and verified["key_id"] == keys["key_id"]
    inspected = _ok("bundle", "inspect", created["bundle"])
    assert inspected["device_class"] == "rpi4" and inspected["inputs"][0]["name"] == "pixels"

    again = runner.invoke(app, ["keys", "generate", "--out", str(tmp_path / "keys")])
    assert again.exit_code == ExitCode.USAGE and "--force" in again.output


def test_verify_exits_4_with_the_reason_for_an_untrusted_bundle(tmp_path: Path, digits: DigitsModels) -> None:
    signer = _ok("keys", "generate", "--out", str(tmp_path / "a"))
    stranger = _ok("keys", "generate", "--out", str(tmp_path / "b"))
    created = _ok(
        "bundle", "create", str(digits.v1), "--name", "d", "--version", "1", "--device-class", "x",
        "--key", signer["private_key"], "--out", str(tmp_path / "d.bundle"),
    )  # fmt: skip
    result = runner.invoke(app, ["bundle", "verify", created["bundle"], "--trusted-key", stranger["public_key"]])
    assert result.exit_code == ExitCode.BUNDLE_INVALID
    assert "not trusted" in result.output


def test_validate_config_prints_each_problem_and_exits_3(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text('device_id = "pi-1"\ndata_dir = "d"\ntrusted_keys = []\nfrobnicate = 1\n')
    result = runner.invoke(app, ["agent", "validate-config", str(path)])
    assert result.exit_code == ExitCode.CONFIG_INVALID
    assert "device_class: Field required" in result.output
    assert "trusted_keys" in result.output and "frobnicate" in result.output
    path.write_text('device_id = "pi-1"\ndevice_class = "rpi9"\ndata_dir = "d"\ntrusted_keys = ["k.pub"]\n')
    result = runner.invoke(app, ["agent", "validate-config", str(path)])
    assert result.exit_code == ExitCode.CONFIG_INVALID and "unknown device class 'rpi9'" in result.output
    path.write_text('device_id = "pi-1"\ndevice_class = "rpi4"\ndata_dir = "d"\ntrusted_keys = ["k.pub"]\n')
    result = runner.invoke(app, ["agent", "validate-config", str(path)])
    assert result.exit_code == ExitCode.CONFIG_INVALID
    assert f"trusted key {tmp_path / 'k.pub'}: no such file" in result.output
    (tmp_path / "k.pub").write_text("not a key")
    result = runner.invoke(app, ["agent", "validate-config", str(path)])
    assert result.exit_code == ExitCode.CONFIG_INVALID and f"trusted key {tmp_path / 'k.pub'}:" in result.output
    (tmp_path / "k.pub").write_bytes(generate_keypair()[1])
    result = runner.invoke(app, ["agent", "validate-config", str(path)])
    assert result.exit_code == 0 and "device class rpi4" in result.output, result.output


def test_the_console_script_runs_as_a_module() -> None:
    result = subprocess.run([sys.executable, "-m", "edgefleet", "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    for group in ("agent", "coordinator", "bundle", "keys", "demo"):
        assert group in result.stdout


def test_campaign_cli_explains_bad_input_before_calling_the_coordinator(tmp_path: Path) -> None:
    spec = tmp_path / "spec.toml"
    spec.write_text('model = "digits"\nrounds = [\n')
    result = runner.invoke(app, ["campaign", "create", str(spec)])
    # rich wraps a long path (a pytest-xdist worker's tmp_path is longer) at the console's width
    assert result.exit_code == ExitCode.CONFIG_INVALID and "spec.toml" in result.output.replace("\n", "")
    spec.write_text('model = "digits"\nrounds = 3\n')
    result = runner.invoke(app, ["campaign", "create", str(spec), "--target", "room=5"])
    assert result.exit_code == ExitCode.USAGE and "--target" in result.output
    result = runner.invoke(app, ["campaign", "create", str(spec), "--url", "http://127.0.0.1:9"])
    assert result.exit_code == ExitCode.UNREACHABLE


def test_agent_run_starts_the_daemon_without_the_rest_of_the_cli(tmp_path: Path) -> None:
    # The daemon's path must not load typer, rich or other commands' modules: they cost an idle agent ~8 MB.
    probe = (
        "import sys, edgefleet.launch, agent.run, agent.daemon;"
        "print(sorted({'typer', 'rich', 'click', 'fastapi', 'torch', 'coordinator'} & set(sys.modules)))"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]"

    missing = subprocess.run(
        [sys.executable, "-m", "edgefleet", "agent", "run", "--config", str(tmp_path / "none.toml")],
        capture_output=True,
        text=True,
    )
    assert missing.returncode == ExitCode.CONFIG_INVALID and missing.stderr.startswith("error: ")
    usage = subprocess.run([sys.executable, "-m", "edgefleet", "agent", "run"], capture_output=True, text=True)
    assert usage.returncode == ExitCode.USAGE and "--config" in usage.stderr
    # --help still goes through the full CLI.
    helped = subprocess.run(
        [sys.executable, "-m", "edgefleet", "agent", "run", "--help"], capture_output=True, text=True
    )
    assert helped.returncode == 0 and "SIGHUP" in helped.stdout


def test_data_with_brackets_prints_as_it_is(capsys) -> None:  # type: ignore[no-untyped-def]
    """rich markup must not eat data: "edgefleet[federated]", a shape "[1, 3]", a device's error text."""
    import pytest
    import typer

    from edgefleet.common.output import Format, fail, print_data

    print_data({"hint": "pip install edgefleet[federated]", "shape": [1, 3], "error": "[bold red]x[/]"}, Format.table)
    out = capsys.readouterr().out
    assert "edgefleet[federated]" in out and "[1, 3]" in out and "[bold red]x[/]" in out
    with pytest.raises(typer.Exit):
        fail("needs pip install edgefleet[federated]", ExitCode.ERROR)
    assert "edgefleet[federated]" in capsys.readouterr().err


def _edgefleet(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgefleet", *args], capture_output=True, text=True, timeout=120)


def test_every_rest_failure_has_the_exit_code_of_the_readme_table(tmp_path: Path, fleet, keys) -> None:  # type: ignore[no-untyped-def]
    """One walk of the table against a real coordinator (and a server that is not one)."""
    import http.server
    import threading

    fleet.start_coordinator()
    url = f"http://127.0.0.1:{fleet.api_port}"
    token = ["--url", url, "--token", fleet.token]
    garbage = tmp_path / "garbage.bundle"
    garbage.write_bytes(b"not a bundle")

    assert _edgefleet("coordinator", "devices", *token).returncode == ExitCode.OK
    assert _edgefleet("coordinator", "devices", "--url", url, "--token", "wrong").returncode == ExitCode.UNAUTHORIZED
    assert _edgefleet("coordinator", "devices", "--url", url).returncode == ExitCode.UNAUTHORIZED
    assert _edgefleet("rollout", "status", "nope", *token).returncode == ExitCode.NOT_FOUND
    assert _edgefleet("coordinator", "upload", str(garbage), *token).returncode == ExitCode.BUNDLE_INVALID
    refused = _edgefleet("coordinator", "deploy", "x" * 10, *token)
    assert refused.returncode == ExitCode.USAGE and "Traceback" not in refused.stderr, refused.stderr
    down = _edgefleet("coordinator", "devices", "--url", "http://127.0.0.1:9", "--token", "t")
    assert down.returncode == ExitCode.UNREACHABLE and "cannot reach" in down.stderr

    class Html(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"<html>a router's login page</html>")

        def log_message(self, *_args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Html)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        other = _edgefleet("coordinator", "devices", "--url", f"http://127.0.0.1:{server.server_port}")
    finally:
        server.shutdown()
    assert other.returncode == ExitCode.UNREACHABLE and "is it an edgefleet coordinator" in other.stderr
    assert "Traceback" not in other.stderr


def test_version_is_printed_without_loading_the_cli() -> None:
    result = _edgefleet("--version")
    assert result.returncode == 0 and result.stdout.strip() == "edgefleet 0.1.0"


def test_a_bundle_is_deployed_by_the_digest_prefix_a_table_prints(tmp_path: Path, fleet, keys, digits) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import build

    fleet.start_coordinator()
    fleet.add_agent("gw-1", "x86-gateway")
    fleet.start_agents(["gw-1"])
    fleet.wait_registered(["gw-1"])
    bundle, digest = build(digits.v1, tmp_path / "v1.bundle", keys, version="1.0.0")
    token = ["--url", f"http://127.0.0.1:{fleet.api_port}", "--token", fleet.token]
    uploaded = _edgefleet("coordinator", "upload", str(bundle), *token)
    assert uploaded.returncode == 0 and digest[:16] in uploaded.stdout and digest not in uploaded.stdout
    deployed = _edgefleet("coordinator", "deploy", digest[:16], "--device", "gw-1", *token, "--format", "json")
    assert deployed.returncode == 0, deployed.stderr
    fleet.wait_active(digest, ["gw-1"])
    unknown = _edgefleet("coordinator", "deploy", "0123456789abcdef", *token)
    assert unknown.returncode == ExitCode.NOT_FOUND
