"""Run mypy over the installed namespace as it is laid out in this checkout.

setuptools maps the repository's folders into ``edgefleet.*`` (pyproject's package-dir); an editable
install serves them through an import hook that mypy does not follow. This builds the tree mypy
needs, ``build/typecheck/edgefleet``, out of symbolic links to the folders (rebuilt on every run, so
new files are seen), then runs mypy with the project's configuration.

Usage: python scripts/typecheck.py [MYPY ARGS]
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TREE = ROOT / "build" / "typecheck"


def build_tree() -> Path:
    package_dir: dict[str, str] = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-dir"
    ]
    shutil.rmtree(TREE, ignore_errors=True)
    namespace = TREE / "edgefleet"
    namespace.mkdir(parents=True)
    for entry in (ROOT / package_dir["edgefleet"]).iterdir():
        if entry.name != "__pycache__":
            (namespace / entry.name).symlink_to(entry)
    for package, folder in package_dir.items():
        if package != "edgefleet":
            (namespace / package.removeprefix("edgefleet.")).symlink_to(ROOT / folder)
    return TREE


if __name__ == "__main__":
    build_tree()
    sys.exit(subprocess.run([sys.executable, "-m", "mypy", *sys.argv[1:]], cwd=ROOT).returncode)
