"""Build the agent's Debian package, edgefleet-agent_<version>_<arch>.deb, from this repository.

    python packaging/build_deb.py --out dist                     # arch of this machine
    python packaging/build_deb.py --out dist --arch arm64 --bundle-deps

What the package holds (the maintainer scripts in packaging/debian/ do the rest on the device):

    /opt/edgefleet/wheels/      the edgefleet wheel (core only: no PyTorch, Flower or Opacus), and
                                with --bundle-deps the wheels of its dependencies for --arch
    /opt/edgefleet/share/       render_unit.py, the unit template and drop-ins, build.env, README.md
    /etc/edgefleet/agent.toml   the example config (a conffile)
    /lib/systemd/system/edgefleet-agent.service   the unit rendered for x86-gateway

postinst creates the user edgefleet and the venv /opt/edgefleet/venv, installs the wheel into it,
and renders the unit for the device's own class. Without --bundle-deps the device fetches the
dependencies from its package index at install time; with it, the install needs no network.
"""

from __future__ import annotations

import argparse
import math
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

from render_unit import DEFAULT_CLASS, render_unit

from edgefleet.agent.device_class import load_device_class

__all__ = ["PACKAGE", "BuildError", "Project", "build_deb", "build_wheel", "debian_version", "download_deps"]

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PACKAGE = "edgefleet-agent"
DEFAULT_MAINTAINER = "edgefleet maintainers <edgefleet@example.invalid>"
CONFFILE = Path("etc/edgefleet/agent.toml")
# Debian architecture -> the machine name in manylinux wheel tags. ONNX Runtime publishes no wheels
# for 32-bit ARM (armhf), so there is no agent package for it.
WHEEL_MACHINES = {"amd64": "x86_64", "arm64": "aarch64"}
# pip download takes exactly these tags (it does not widen manylinux_2_28 to older ones). They ask
# for glibc 2.28 at most: Debian 10+, Ubuntu 20.04+ (L4T R35+), Raspberry Pi OS bookworm.
MANYLINUX_TAGS = ("manylinux_2_28", "manylinux_2_27", "manylinux_2_24", "manylinux_2_17", "manylinux2014")
_SOURCE_JUNK = shutil.ignore_patterns(
    ".git",
    ".venv",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    ".benchmarks",
    "__pycache__",
    "*.egg-info",
    "build",
    "dist",
    "*.bundle",
)


class BuildError(Exception):
    """A step of the build failed; ``reason`` says which and why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Project:
    version: str
    dependencies: list[str]

    @classmethod
    def read(cls, repo: Path = REPO) -> Project:
        project = tomllib.loads((repo / "pyproject.toml").read_text())["project"]
        return cls(version=project["version"], dependencies=list(project["dependencies"]))


def debian_version(version: str) -> str:
    """A PEP 440 version as a Debian one that sorts the same: 1.2.0rc1 -> 1.2.0~rc1, 1.2.dev3 -> 1.2~dev3."""
    return re.sub(r"\.?(a|b|rc|dev)(\d+)", r"~\1\2", version)


def _run(cmd: list[str], what: str) -> None:
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise BuildError(f"{what} failed ({' '.join(cmd[:4])} ...):\n{result.stdout}{result.stderr}")


def build_wheel(repo: Path, out: Path, *, build_isolation: bool = True) -> Path:
    """Build the project's wheel (no dependencies) into ``out`` from a clean copy of ``repo``.

    The copy keeps setuptools' build/ and egg-info out of the working tree. Without build
    isolation, the setuptools installed here is used and nothing is downloaded.
    """
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edgefleet-src-") as tmp:
        source = Path(tmp) / "src"
        shutil.copytree(repo, source, ignore=_SOURCE_JUNK)
        cmd = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(out), str(source)]
        if not build_isolation:
            cmd.insert(cmd.index("-w"), "--no-build-isolation")
        _run(cmd, "building the edgefleet wheel")
    wheels = sorted(out.glob("edgefleet-*.whl"))
    if len(wheels) != 1:
        raise BuildError(f"expected one edgefleet wheel in {out}, found {[w.name for w in wheels]}")
    return wheels[0]


def _wheel_machine(arch: str) -> str:
    machine = WHEEL_MACHINES.get(arch)
    if machine is None:
        raise BuildError(f"no wheels to bundle for {arch!r}: supported are {', '.join(WHEEL_MACHINES)}")
    return machine


def download_deps(dependencies: list[str], out: Path, *, arch: str, python_version: str) -> None:
    """Download binary wheels of ``dependencies`` (and theirs) for ``arch`` and CPython ``python_version``."""
    machine = _wheel_machine(arch)
    abi = "cp" + python_version.replace(".", "")
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:", "-d", str(out)]
    cmd += ["--implementation", "cp", "--python-version", python_version, "--abi", abi]
    for tag in MANYLINUX_TAGS:
        cmd += ["--platform", f"{tag}_{machine}"]
    _run([*cmd, *dependencies], f"downloading the dependencies for {arch} / Python {python_version}")


def _control(version: str, arch: str, maintainer: str, installed_kib: int) -> str:
    return (
        f"Package: {PACKAGE}\n"
        f"Version: {version}\n"
        f"Architecture: {arch}\n"
        f"Maintainer: {maintainer}\n"
        f"Installed-Size: {installed_kib}\n"
        "Depends: python3 (>= 3.11), python3-venv, passwd\n"
        "Section: misc\n"
        "Priority: optional\n"
        "Description: edgefleet agent: signed ML models served on edge devices\n"
        " The daemon on each edgefleet device. It receives signed model bundles over\n"
        " MQTT, verifies them, activates them atomically and serves them to apps on\n"
        " the device through a local gRPC API, also offline. It runs as the user\n"
        " edgefleet in a hardened systemd unit whose memory and CPU limits come from\n"
        " the device class.\n"
    )


def _copy(src: Path, dest: Path, mode: int = 0o644) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)
    dest.chmod(mode)


def _stage(root: Path, wheels: Path, unit: str, build_env: str) -> None:
    share = root / "opt/edgefleet/share"
    for wheel in sorted(wheels.glob("*.whl")):
        _copy(wheel, root / "opt/edgefleet/wheels" / wheel.name)
    _copy(HERE / "render_unit.py", share / "render_unit.py")
    for name in ("edgefleet-agent.service.in", "jetson.conf"):
        _copy(HERE / "systemd" / name, share / "systemd" / name)
    _copy(HERE / "README.md", share / "README.md")
    (share / "build.env").write_text(build_env)
    _copy(HERE / "agent.toml.example", root / CONFFILE)
    unit_path = root / "lib/systemd/system/edgefleet-agent.service"
    unit_path.parent.mkdir(parents=True)
    unit_path.write_text(unit)
    doc = root / "usr/share/doc" / PACKAGE
    doc.mkdir(parents=True)
    (doc / "copyright").write_text(
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n"
        "Upstream-Name: edgefleet\n\nFiles: *\nCopyright: edgefleet contributors\nLicense: Apache-2.0\n"
        " On Debian systems the full text is in /usr/share/common-licenses/Apache-2.0.\n"
    )
    for path in root.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)


def build_deb(
    out: Path,
    *,
    arch: str,
    repo: Path = REPO,
    wheel: Path | None = None,
    bundle_deps: bool = False,
    python_version: str = "3.11",
    build_isolation: bool = True,
    maintainer: str = DEFAULT_MAINTAINER,
) -> Path:
    """Build the package into ``out`` and return its path; ``wheel`` skips building the wheel."""
    if bundle_deps:
        _wheel_machine(arch)  # refuse an unsupported architecture before building anything
    project = Project.read(repo)
    version = debian_version(project.version)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edgefleet-deb-") as tmp:
        wheels = Path(tmp) / "wheels"
        wheels.mkdir()
        if wheel is None:
            wheel = build_wheel(repo, wheels, build_isolation=build_isolation)
        else:
            wheel = Path(shutil.copy(wheel, wheels))
        if bundle_deps:
            download_deps(project.dependencies, wheels, arch=arch, python_version=python_version)
        build_env = (
            f"EDGEFLEET_VERSION={project.version}\n"
            f"EDGEFLEET_WHEEL={wheel.name}\n"
            f"EDGEFLEET_DEPS_BUNDLED={'yes' if bundle_deps else 'no'}\n"
            + (f"EDGEFLEET_DEPS_PYTHON={python_version}\n" if bundle_deps else "")
        )
        root = Path(tmp) / "root"
        _stage(root, wheels, render_unit(load_device_class(DEFAULT_CLASS)), build_env)
        debian = root / "DEBIAN"
        debian.mkdir(mode=0o755)
        for script in ("postinst", "prerm", "postrm"):
            _copy(HERE / "debian" / script, debian / script, 0o755)
        (debian / "conffiles").write_text(f"/{CONFFILE}\n")
        size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and debian not in p.parents)
        (debian / "control").write_text(_control(version, arch, maintainer, math.ceil(size / 1024)))
        deb = out / f"{PACKAGE}_{version}_{arch}.deb"
        _run(["dpkg-deb", "--build", "--root-owner-group", "-Zgzip", str(root), str(deb)], "dpkg-deb --build")
    return deb


def _host_arch() -> str:
    try:
        return subprocess.run(
            ["dpkg", "--print-architecture"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError) as exc:
        raise BuildError(f"cannot ask dpkg for this machine's architecture ({exc}); pass --arch") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Build edgefleet-agent_<version>_<arch>.deb.",
        epilog="Example: python packaging/build_deb.py --out dist --arch arm64 --bundle-deps",
    )
    parser.add_argument("--out", type=Path, default=REPO / "dist", help="Folder for the .deb (default: dist/).")
    parser.add_argument("--arch", help="Debian architecture (default: dpkg --print-architecture).")
    parser.add_argument("--wheel", type=Path, help="Ship this edgefleet wheel instead of building one.")
    parser.add_argument(
        "--bundle-deps",
        action="store_true",
        help="Also ship the core dependencies' wheels for --arch (pip download): the device installs offline.",
    )
    parser.add_argument(
        "--python-version", default="3.11", help="Python of the devices, for --bundle-deps (Debian 12: 3.11)."
    )
    parser.add_argument(
        "--no-build-isolation",
        action="store_true",
        help="Build the wheel with the setuptools installed here instead of fetching one.",
    )
    parser.add_argument("--maintainer", default=DEFAULT_MAINTAINER, help="The control file's Maintainer field.")
    args = parser.parse_args(argv)
    try:
        deb = build_deb(
            args.out,
            arch=args.arch or _host_arch(),
            wheel=args.wheel,
            bundle_deps=args.bundle_deps,
            python_version=args.python_version,
            build_isolation=not args.no_build_isolation,
            maintainer=args.maintainer,
        )
    except BuildError as exc:
        print(f"build_deb: {exc.reason}", file=sys.stderr)
        return 1
    print(deb)
    return 0


if __name__ == "__main__":
    sys.exit(main())
