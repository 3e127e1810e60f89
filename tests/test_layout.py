"""The layout: one import namespace in the wheel, and layers that only import downwards."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_DIR: dict[str, str] = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]

# Lowest first. A module may import its own layer and those below it, never one above.
LAYERS: list[tuple[str, ...]] = [
    ("edgefleet.common", "edgefleet.firmware_configs"),
    ("edgefleet.protocol",),
    ("edgefleet.agent",),
    ("edgefleet.compression", "edgefleet.federated"),
    ("edgefleet.coordinator",),
    ("edgefleet.cli", "edgefleet.local", "edgefleet.launch", "edgefleet.__main__"),
]
# Beside the layers: pairs of parts that may not import one another although the layers allow it.
SEPARATED = [
    ("edgefleet.compression", "edgefleet.federated"),
    ("edgefleet.federated", "edgefleet.compression"),
    ("edgefleet.federated.server", "edgefleet.federated.client"),
    ("edgefleet.federated.client", "edgefleet.federated.server"),
]


def source_modules() -> Iterator[tuple[str, Path]]:
    """Every module of the namespace, by its installed name, and its file in this checkout."""
    for package, folder in PACKAGE_DIR.items():
        base = ROOT / folder
        for path in sorted(base.rglob("*.py")):
            relative = path.relative_to(base).with_suffix("")
            parts = [p for p in relative.parts if p != "__init__"]
            if package == "edgefleet" and parts and f"edgefleet.{parts[0]}" in PACKAGE_DIR:
                continue
            if "grpc_gen" in parts:
                continue
            yield ".".join([package, *parts]), path


def imported(path: Path, module: str) -> Iterator[tuple[int, str]]:
    """The edgefleet modules a file imports (at any depth: lazy imports count too)."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the importing module's package
                base = module.split(".")
                is_package = path.name == "__init__.py"
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                yield node.lineno, ".".join([*base, *([node.module] if node.module else [])])
            elif node.module:
                yield node.lineno, node.module


def layer_of(module: str) -> int | None:
    for index, parts in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in parts):
            return index
    return None


def within(module: str, part: str) -> bool:
    return module == part or module.startswith(part + ".")


def test_every_module_belongs_to_a_layer() -> None:
    unplaced = [name for name, _ in source_modules() if name != "edgefleet" and layer_of(name) is None]
    assert not unplaced, f"modules outside every layer (add them to LAYERS): {unplaced}"


def test_no_module_imports_a_layer_above_its_own() -> None:
    upward, separated = [], []
    for name, path in source_modules():
        own = layer_of(name)
        if own is None:
            continue
        for line, target in imported(path, name):
            if not within(target, "edgefleet"):
                continue
            theirs = layer_of(target)
            where = f"{path.relative_to(ROOT)}:{line} {name} -> {target}"
            if theirs is not None and theirs > own:
                upward.append(where)
            if any(within(name, a) and within(target, b) for a, b in SEPARATED):
                separated.append(where)
    assert not upward, "imports from a higher layer:\n" + "\n".join(upward)
    assert not separated, "imports between parts kept apart:\n" + "\n".join(separated)


def test_nothing_imports_the_old_top_level_names() -> None:
    old = {"protocol", "agent", "coordinator", "compression", "federated", "firmware_configs"}
    found = []
    for path in [*ROOT.glob("tests/**/*.py"), *ROOT.glob("bench/*.py"), *ROOT.glob("scripts/*.py"),
                 *ROOT.glob("packaging/*.py"), *(p for _, p in source_modules())]:  # fmt: skip
        for line, target in imported(path, "tests"):
            if target.split(".")[0] in old:
                found.append(f"{path.relative_to(ROOT)}:{line} {target}")
    assert not found, "\n".join(found)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    sys.path.insert(0, str(ROOT / "packaging"))
    try:
        from build_deb import build_wheel
    finally:
        sys.path.remove(str(ROOT / "packaging"))
    return build_wheel(ROOT, tmp_path_factory.mktemp("wheel"), build_isolation=False)


def test_the_wheel_installs_only_the_edgefleet_namespace_with_every_package(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        [top_level] = [n for n in names if n.endswith(".dist-info/top_level.txt")]
        tops = archive.read(top_level).decode().split()
    assert tops == ["edgefleet"]
    assert all(n.startswith(("edgefleet/", "edgefleet-")) for n in names), sorted(
        n for n in names if not n.startswith(("edgefleet/", "edgefleet-"))
    )
    expected = {name.replace(".", "/") for name, path in source_modules() if path.name == "__init__.py"}
    packaged = {n.rsplit("/", 1)[0] for n in names if n.endswith("/__init__.py")}
    assert expected <= packaged, f"packages missing from the wheel: {sorted(expected - packaged)}"
    data = {
        "edgefleet/protocol/proto/inference.proto",
        "edgefleet/coordinator/dashboard/index.html",
        "edgefleet/federated/flower_app/pyproject.toml",
        "edgefleet/firmware_configs/rpi4.toml",
    }
    assert data <= set(names)


def test_the_installed_wheel_imports_from_anywhere(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    install = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(wheel)]
    subprocess.run(install, check=True, timeout=120)
    code = (
        "import edgefleet.agent.daemon, edgefleet.coordinator.service, edgefleet.compression.pipeline,"
        " edgefleet.federated.server.server_app, edgefleet.cli.main, edgefleet.protocol.grpc_gen.inference_pb2 as pb;"
        "import edgefleet.agent as a; print(a.__file__)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={"PYTHONPATH": str(target), "PATH": ""},
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith(str(target)), result.stdout
