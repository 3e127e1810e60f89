"""The agent's packaging: the systemd unit per device class, the .deb, the install script."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from edgefleet.agent.config import load_config
from edgefleet.agent.device_class import load_device_class
from edgefleet.common.errors import ConfigError
from edgefleet.firmware_configs import shipped_classes

ROOT = Path(__file__).resolve().parent.parent
PACKAGING = ROOT / "packaging"
SHELL_SCRIPTS = [PACKAGING / "install.sh", *(PACKAGING / "debian" / s for s in ("postinst", "prerm", "postrm"))]
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]

# Directive -> exact value in [Service] of every rendered unit.
HARDENING = {
    "Type": "notify",
    "NotifyAccess": "main",
    "WatchdogSec": "30",
    "Restart": "on-failure",
    "RestartSec": "5",
    "User": "edgefleet",
    "Group": "edgefleet",
    "StateDirectory": "edgefleet",
    "ConfigurationDirectory": "edgefleet",
    "RuntimeDirectory": "edgefleet",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "NoNewPrivileges": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectControlGroups": "yes",
    "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
    "LockPersonality": "yes",
    "RestrictRealtime": "yes",
    "SystemCallArchitectures": "native",
    "CapabilityBoundingSet": "",
    "ExecStart": "/opt/edgefleet/venv/bin/edgefleet agent run --config /etc/edgefleet/agent.toml",
    "ExecReload": "/bin/kill -HUP $MAINPID",
}


def _load(name: str) -> ModuleType:
    """A script of packaging/ as a module (packaging/ is no package: it would shadow PyPI's `packaging`)."""
    sys.path.insert(0, str(PACKAGING))
    try:
        spec = importlib.util.spec_from_file_location(name, PACKAGING / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(PACKAGING))
    return module


render_unit = _load("render_unit")


def _directives(unit: str) -> dict[str, dict[str, str]]:
    """section -> key -> value (the last one wins, as in systemd for these single-valued keys)."""
    sections: dict[str, dict[str, str]] = {}
    current = sections.setdefault("", {})
    for line in unit.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, _, value = line.partition("=")
        current[key] = value
    return sections


def _run(*cmd: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=60)


# -- the unit ------------------------------------------------------------------------------


def test_the_six_device_classes_are_shipped() -> None:
    expected = {"jetson-orin-nano", "jetson-agx-orin", "jetson-xavier-nx", "rpi5", "rpi4", "x86-gateway"}
    assert expected <= set(shipped_classes())


@pytest.mark.parametrize("name", shipped_classes())
def test_the_unit_takes_its_limits_from_the_class_and_keeps_the_hardening(name: str) -> None:
    device_class = load_device_class(name)

    unit = _directives(render_unit.render_unit(device_class))

    service = unit["Service"]
    assert service["MemoryMax"] == f"{device_class.limits.memory_max_mb}M"
    assert service["CPUQuota"] == f"{device_class.limits.cpu_quota_percent}%"
    assert {key: service.get(key) for key in HARDENING} == HARDENING
    assert int(unit["Unit"]["StartLimitBurst"]) >= 1
    assert name in unit["Unit"]["Description"]
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_the_rpi4_unit_as_the_cli_prints_it() -> None:
    result = _run(sys.executable, PACKAGING / "render_unit.py", "--device-class", "rpi4")

    assert result.returncode == 0, result.stderr
    service = _directives(result.stdout)["Service"]
    assert (service["MemoryMax"], service["CPUQuota"]) == ("384M", "300%")


def test_an_unknown_class_is_refused_with_the_known_ones() -> None:
    result = _run(sys.executable, PACKAGING / "render_unit.py", "--device-class", "pdp-11")

    assert result.returncode == 3
    assert "unknown device class 'pdp-11'" in result.stderr and "rpi4" in result.stderr


def test_only_jetson_classes_get_the_gpu_drop_in() -> None:
    for name in shipped_classes():
        drop_ins = [p.name for p in render_unit.drop_ins_for(load_device_class(name))]
        assert drop_ins == (["jetson.conf"] if name.startswith("jetson-") else []), name
    jetson = _directives(render_unit.JETSON_DROP_IN.read_text())["Service"]
    assert jetson["PrivateDevices"] == "no" and jetson["DevicePolicy"] == "closed"
    assert jetson["SupplementaryGroups"] == "video"
    allowed = [
        line.split("=", 1)[1]
        for line in render_unit.JETSON_DROP_IN.read_text().splitlines()
        if line.startswith("DeviceAllow=")
    ]
    assert {"char-nvhost* rw", "char-nvidia* rw", "/dev/nvmap rw"} <= set(allowed)


def test_install_writes_only_what_differs_from_the_vendor_unit_and_follows_class_changes(tmp_path: Path) -> None:
    vendor = tmp_path / "lib/systemd/system/edgefleet-agent.service"
    vendor.parent.mkdir(parents=True)
    vendor.write_text(render_unit.render_unit(load_device_class("x86-gateway")))
    admin = tmp_path / "etc/systemd/system/edgefleet-agent.service"
    drop_in = tmp_path / "etc/systemd/system/edgefleet-agent.service.d/jetson.conf"
    operators_own = drop_in.with_name("local.conf")

    assert render_unit.install_unit(load_device_class("x86-gateway"), tmp_path)[0].startswith("use ")
    assert not admin.exists()

    render_unit.install_unit(load_device_class("jetson-orin-nano"), tmp_path)
    assert _directives(admin.read_text())["Service"]["MemoryMax"] == "2048M"
    assert drop_in.read_text() == render_unit.JETSON_DROP_IN.read_text()
    assert render_unit.install_unit(load_device_class("jetson-orin-nano"), tmp_path) == [
        f"keep {admin}",
        f"keep {drop_in}",
    ]

    operators_own.write_text("[Service]\nEnvironment=HTTPS_PROXY=http://proxy:3128\n")
    render_unit.install_unit(load_device_class("rpi4"), tmp_path)
    assert _directives(admin.read_text())["Service"]["MemoryMax"] == "384M"
    assert not drop_in.exists() and operators_own.exists()


def test_the_class_comes_from_the_config_unless_it_is_a_placeholder(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('device_id = "pi-1"\ndevice_class = "rpi5"\n')
    assert render_unit.choose_device_class(config) == ("rpi5", f"device_class in {config}")

    config.write_text((PACKAGING / "agent.toml.example").read_text())
    name, why = render_unit.choose_device_class(config)
    assert name in shipped_classes()
    assert "detected" in why or "default" in why


def _verifiable(unit: str, folder: Path) -> Path:
    """The unit in ``folder`` with ExecStart pointing at a stub that exists.

    `systemd-analyze verify` fails a unit whose ExecStart binary is missing, and
    /opt/edgefleet/venv/bin/edgefleet only exists on an installed device. Only the binary is
    swapped; its arguments and every other line are verified as rendered.
    """
    stub = folder / "bin" / "edgefleet"
    stub.parent.mkdir(parents=True, exist_ok=True)
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    path = folder / "edgefleet-agent.service"
    path.write_text(unit.replace("ExecStart=/opt/edgefleet/venv/bin/edgefleet ", f"ExecStart={stub} "))
    return path


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing: apt-get install systemd")
@pytest.mark.parametrize("name", shipped_classes())
def test_systemd_analyze_verifies_the_unit_and_its_drop_ins(name: str, tmp_path: Path) -> None:
    device_class = load_device_class(name)
    path = _verifiable(render_unit.render_unit(device_class), tmp_path)
    for drop_in in render_unit.drop_ins_for(device_class):
        (tmp_path / "edgefleet-agent.service.d").mkdir(exist_ok=True)
        shutil.copy(drop_in, tmp_path / "edgefleet-agent.service.d" / drop_in.name)

    result = _run("systemd-analyze", "verify", path)

    # Unknown keys and bad values are only warnings (exit 0): any line about our files fails.
    ours = [line for line in result.stderr.splitlines() if "edgefleet-agent" in line or ".conf" in line]
    assert result.returncode == 0 and not ours, result.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing: apt-get install systemd")
def test_systemd_rates_the_sandbox_as_well_exposed_at_most_a_little(tmp_path: Path) -> None:
    path = _verifiable(render_unit.render_unit(load_device_class("rpi4")), tmp_path)

    result = _run("systemd-analyze", "security", "--offline=true", "--no-pager", path)

    if "--offline" in result.stderr and "unrecognized" in result.stderr:
        pytest.skip("systemd-analyze security --offline needs systemd >= 250")
    overall = [line for line in result.stdout.splitlines() if "Overall exposure level" in line]
    assert overall, result.stdout + result.stderr
    exposure = float(overall[0].split(":")[1].split()[0])
    assert exposure <= 3.0, overall[0]  # 0 is sealed, 10 is unprotected; 1.8 at the time of writing


# -- the .deb ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The package built into a temp folder, as `build_deb.py` does it (about 3 s)."""
    if shutil.which("dpkg-deb") is None:
        pytest.fail("dpkg-deb is not installed: apt-get install dpkg (.ci/run does this)")
    out = tmp_path_factory.mktemp("deb")
    result = _run(sys.executable, PACKAGING / "build_deb.py", "--out", out, "--no-build-isolation")
    assert result.returncode == 0, result.stdout + result.stderr
    yield Path(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def unpacked(deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("unpacked")
    assert _run("dpkg-deb", "--extract", deb, root).returncode == 0
    assert _run("dpkg-deb", "--control", deb, root / "DEBIAN").returncode == 0
    return root


def test_the_package_is_named_and_described_for_this_machine(deb: Path) -> None:
    arch = _run("dpkg", "--print-architecture").stdout.strip()
    assert deb.name == f"edgefleet-agent_{VERSION}_{arch}.deb"

    output = _run("dpkg-deb", "--field", deb, "Package", "Version", "Architecture", "Depends", "Maintainer").stdout
    fields = dict(line.split(": ", 1) for line in output.splitlines())

    assert fields.pop("Maintainer")
    assert fields == {
        "Package": "edgefleet-agent",
        "Version": VERSION,
        "Architecture": arch,
        "Depends": "python3 (>= 3.11), python3-venv, passwd",
    }


def test_the_config_is_a_conffile_and_the_maintainer_scripts_are_executable(deb: Path, unpacked: Path) -> None:
    info = _run("dpkg-deb", "--info", deb).stdout
    assert _run("dpkg-deb", "--info", deb, "conffiles").stdout.split() == ["/etc/edgefleet/agent.toml"]

    for script in ("postinst", "prerm", "postrm"):
        path = unpacked / "DEBIAN" / script
        assert path.stat().st_mode & 0o111 == 0o111, f"{script} is not executable"
        assert path.read_text().startswith("#!/bin/sh\n")
        assert path.read_bytes() == (PACKAGING / "debian" / script).read_bytes()
        assert script in info


def test_the_package_holds_the_wheel_the_unit_and_the_renderer_owned_by_root(deb: Path, unpacked: Path) -> None:
    listing = _run("dpkg-deb", "--contents", deb).stdout.splitlines()
    files = {line.split()[-1].removeprefix("./") for line in listing}
    wheel = f"opt/edgefleet/wheels/edgefleet-{VERSION}-py3-none-any.whl"

    assert {
        wheel,
        "lib/systemd/system/edgefleet-agent.service",
        "etc/edgefleet/agent.toml",
        "opt/edgefleet/share/render_unit.py",
        "opt/edgefleet/share/build.env",
        "opt/edgefleet/share/systemd/edgefleet-agent.service.in",
        "opt/edgefleet/share/systemd/jetson.conf",
        "usr/share/doc/edgefleet-agent/copyright",
    } <= files
    assert all(line.split()[1] == "root/root" for line in listing)
    # The vendor unit is the x86-gateway one; postinst re-renders for other classes.
    assert (unpacked / "lib/systemd/system/edgefleet-agent.service").read_text() == render_unit.render_unit(
        load_device_class("x86-gateway")
    )
    build_env = dict(line.split("=", 1) for line in (unpacked / "opt/edgefleet/share/build.env").read_text().split())
    assert build_env == {
        "EDGEFLEET_VERSION": VERSION,
        "EDGEFLEET_WHEEL": Path(wheel).name,
        "EDGEFLEET_DEPS_BUNDLED": "no",
    }


def test_the_wheel_in_the_package_is_the_lean_core_with_the_device_classes(unpacked: Path) -> None:
    wheel = unpacked / f"opt/edgefleet/wheels/edgefleet-{VERSION}-py3-none-any.whl"

    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = archive.read(f"edgefleet-{VERSION}.dist-info/METADATA").decode()

    assert {f"edgefleet/firmware_configs/{name}.toml" for name in shipped_classes()} <= names
    assert {"edgefleet/cli/agent.py", "edgefleet/agent/device_class.py", "edgefleet/cli/main.py"} <= names
    core = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:") and "extra ==" not in line]
    assert core and not [line for line in core if any(heavy in line for heavy in ("torch", "flwr", "opacus"))]


def test_the_example_config_parses_and_validates_once_filled_in(unpacked: Path, tmp_path: Path) -> None:
    example = (unpacked / "etc/edgefleet/agent.toml").read_text()
    raw = tmp_path / "raw.toml"
    raw.write_text(example)

    with pytest.raises(ConfigError) as refused:
        load_config(raw)
    assert any(problem.startswith("device_id") for problem in refused.value.problems)

    filled = tmp_path / "agent.toml"
    filled.write_text(
        example.replace("<device-id>", "pi-07").replace("<device-class>", "rpi4").replace("<broker-host>", "broker")
    )
    config = load_config(filled)
    assert config.socket_path == Path("/run/edgefleet/agent.sock")
    assert config.data_dir == Path("/var/lib/edgefleet")
    assert config.broker.password_file == Path("/etc/edgefleet/broker.pass")
    assert load_device_class(config.device_class).name == "rpi4"


def test_bundling_dependencies_refuses_an_architecture_without_onnxruntime_wheels(tmp_path: Path) -> None:
    result = _run(sys.executable, PACKAGING / "build_deb.py", "--out", tmp_path, "--arch", "armhf", "--bundle-deps")

    assert result.returncode == 1
    assert "no wheels to bundle for 'armhf'" in result.stderr


def test_debian_versions_sort_like_the_python_ones() -> None:
    build_deb = _load("build_deb")

    assert [build_deb.debian_version(v) for v in ("0.1.0", "1.2.0rc1", "1.2.0b2", "1.3.dev4")] == [
        "0.1.0",
        "1.2.0~rc1",
        "1.2.0~b2",
        "1.3~dev4",
    ]


# -- shell scripts -------------------------------------------------------------------------


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: p.name)
def test_shell_scripts_parse(script: Path) -> None:
    result = _run("bash", "-n", script)

    assert result.returncode == 0, result.stderr
    assert os.access(script, os.X_OK), f"{script.name} is not executable"


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed (apt-get install shellcheck)")
def test_shellcheck_finds_nothing() -> None:
    result = _run("shellcheck", *SHELL_SCRIPTS)

    assert result.returncode == 0, result.stdout


def _system_state() -> dict[str, object]:
    paths = ["/opt/edgefleet", "/etc/edgefleet", "/etc/systemd/system/edgefleet-agent.service"]
    return {
        "paths": {p: os.path.lexists(p) for p in paths},
        "user": _run("getent", "passwd", "edgefleet").stdout,
        "group": _run("getent", "group", "edgefleet").stdout,
    }


@pytest.mark.skipif(shutil.which("systemctl") is None, reason="install.sh needs systemctl: apt-get install systemd")
def test_install_dry_run_prints_every_step_and_changes_nothing(tmp_path: Path) -> None:
    key = tmp_path / "signing.pub"
    key.write_text("-----BEGIN PUBLIC KEY-----\n")
    before = _system_state()

    result = _run(
        PACKAGING / "install.sh", "--dry-run", "--python", sys.executable, "--device-id", "pi-07",
        "--broker-url", "mqtt://broker.local:1883", "--trusted-key", key, "--device-class", "rpi4",
        "--extras", "tflite",
    )  # fmt: skip

    assert result.returncode == 0, result.stdout + result.stderr
    steps = [line for line in result.stdout.splitlines() if line.startswith("==> ")]
    assert [s.split()[1:3] for s in steps] == [
        ["check", "the"],
        ["the", "system"],
        ["the", "virtual"],
        ["the", "edgefleet"],
        ["the", "unit"],
        ["the", "config"],
        ["the", "systemd"],
        ["the", "service"],
    ]
    assert "edgefleet\\[tflite\\]" in result.stdout  # the pip requirement, shell-quoted
    if not before["user"]:
        assert "would run: useradd --system" in result.stdout
    if not Path("/etc/edgefleet/agent.toml").exists():
        assert "would write /etc/edgefleet/agent.toml (device_id pi-07, device_class rpi4" in result.stdout
    assert result.stdout.rstrip().endswith("dry run: nothing was changed")
    assert _system_state() == before


@pytest.mark.skipif(shutil.which("systemctl") is None, reason="install.sh needs systemctl: apt-get install systemd")
def test_install_refuses_a_new_config_without_a_device_id() -> None:
    if Path("/etc/edgefleet/agent.toml").exists():
        pytest.skip("this machine has an agent config, which install.sh keeps")

    result = _run(PACKAGING / "install.sh", "--dry-run", "--python", sys.executable, "--broker-url", "mqtt://b:1883")

    assert result.returncode == 2
    assert "--device-id is required" in result.stderr
