"""Render the agent's systemd unit for a device class, and install it with its drop-ins.

Print the unit for a class (MemoryMax and CPUQuota come from firmware_configs/<class>.toml)::

    python packaging/render_unit.py --device-class rpi4 > edgefleet-agent.service

Install it for this device (the .deb's postinst and install.sh run this as root). The class comes
from --device-class, else from ``device_class`` in the agent config, else from hardware detection,
else x86-gateway. The unit is written to /etc/systemd/system only where it differs from the one in
/lib/systemd/system, and Jetson classes get the GPU drop-in jetson.conf::

    python packaging/render_unit.py --install --config /etc/edgefleet/agent.toml

Only the standard library and the agent package are used, so the script runs from the
agent's virtual environment on the device.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

from edgefleet.agent.device_class import DeviceClass, detect_device_class, load_device_class, probe_hardware
from edgefleet.common.errors import ConfigError
from edgefleet.firmware_configs import CONFIG_DIR

__all__ = [
    "DEFAULT_CLASS",
    "JETSON_DROP_IN",
    "TEMPLATE",
    "UNIT_NAME",
    "choose_device_class",
    "cpu_quota",
    "drop_ins_for",
    "install_unit",
    "memory_max",
    "render_unit",
]

HERE = Path(__file__).resolve().parent
TEMPLATE = HERE / "systemd" / "edgefleet-agent.service.in"
JETSON_DROP_IN = HERE / "systemd" / "jetson.conf"
UNIT_NAME = "edgefleet-agent.service"
# The class the .deb's vendor unit in /lib/systemd/system is rendered for.
DEFAULT_CLASS = "x86-gateway"
VENDOR_UNIT_DIR = Path("lib/systemd/system")
ADMIN_UNIT_DIR = Path("etc/systemd/system")
_PLACEHOLDER = re.compile(r"@[A-Z_]+@")


def memory_max(device_class: DeviceClass) -> str:
    """systemd's MemoryMax= value, in MiB: ``384M``."""
    return f"{device_class.limits.memory_max_mb}M"


def cpu_quota(device_class: DeviceClass) -> str:
    """systemd's CPUQuota= value: ``300%`` is three cores."""
    return f"{device_class.limits.cpu_quota_percent}%"


def render_unit(device_class: DeviceClass, template: str | None = None) -> str:
    """The unit text for ``device_class``; refuses a template with a placeholder left over."""
    text = TEMPLATE.read_text() if template is None else template
    for placeholder, value in (
        ("@DEVICE_CLASS@", device_class.name),
        ("@MEMORY_MAX@", memory_max(device_class)),
        ("@CPU_QUOTA@", cpu_quota(device_class)),
    ):
        text = text.replace(placeholder, value)
    if _PLACEHOLDER.search(text):
        raise ValueError(f"{TEMPLATE.name}: a placeholder is left after rendering for {device_class.name}")
    return text


def drop_ins_for(device_class: DeviceClass) -> list[Path]:
    """Drop-in files the class needs beside the unit: the GPU device access on Jetson."""
    return [JETSON_DROP_IN] if device_class.name.startswith("jetson-") else []


def choose_device_class(config: Path | None, directory: Path = CONFIG_DIR, root: Path = Path("/")) -> tuple[str, str]:
    """(class name, why): the config's ``device_class`` if it names a class, else detection, else the default.

    Only ``device_class`` is read from the config: an example config whose other values are still
    placeholders must not stop the unit from being installed.
    """
    if config is not None and config.is_file():
        try:
            raw = tomllib.loads(config.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            print(f"render_unit: cannot read {config}: {exc}; detecting the class instead", file=sys.stderr)
            raw = {}
        name = raw.get("device_class")
        if isinstance(name, str) and (directory / f"{name}.toml").is_file():
            return name, f"device_class in {config}"
    detected = detect_device_class(probe_hardware(root), directory)
    if detected is not None:
        return detected, "detected from this hardware"
    return DEFAULT_CLASS, "no class in the config and none detected: the default"


def install_unit(device_class: DeviceClass, root: Path = Path("/"), *, dry_run: bool = False) -> list[str]:
    """Write the unit for ``device_class`` under ``root`` (see the module doc); return what was done.

    Idempotent: files that already hold the right text are left alone, and a rendered unit or
    drop-in from an earlier class that is no longer needed is removed.
    """
    unit = render_unit(device_class)
    vendor = root / VENDOR_UNIT_DIR / UNIT_NAME
    admin = root / ADMIN_UNIT_DIR / UNIT_NAME
    drop_in_dir = root / ADMIN_UNIT_DIR / f"{UNIT_NAME}.d"
    wanted: dict[Path, str] = {}
    if not (vendor.is_file() and vendor.read_text() == unit):
        wanted[admin] = unit
    for drop_in in drop_ins_for(device_class):
        wanted[drop_in_dir / drop_in.name] = drop_in.read_text()

    actions: list[str] = [] if admin in wanted else [f"use {vendor} as it is: it fits {device_class.name}"]
    # Only files this script writes are candidates for removal; an operator's own drop-ins stay.
    ours = [admin, drop_in_dir / JETSON_DROP_IN.name]
    for path in ours:
        if path not in wanted and path.is_file():
            actions.append(f"remove {path}")
            if not dry_run:
                path.unlink()
    for path, text in wanted.items():
        if path.is_file() and path.read_text() == text:
            actions.append(f"keep {path}")
            continue
        actions.append(f"write {path}")
        if not dry_run:
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.is_symlink():  # a mask (-> /dev/null) left by deb-systemd-helper: replace, do not follow
                path.unlink()
            path.write_text(text)
            path.chmod(0o644)
    if not dry_run and drop_in_dir.is_dir() and not any(drop_in_dir.iterdir()):
        drop_in_dir.rmdir()
    return actions


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Render the edgefleet agent's systemd unit for a device class.",
        epilog="Example: python packaging/render_unit.py --device-class rpi4 > edgefleet-agent.service",
    )
    parser.add_argument("--device-class", help="Class name (a file in firmware_configs/).")
    parser.add_argument("--config", type=Path, help="Agent config whose device_class to use when none is given.")
    parser.add_argument("--class-dir", type=Path, default=CONFIG_DIR, help="Folder of device-class files.")
    parser.add_argument("--install", action="store_true", help="Install under --root instead of printing.")
    parser.add_argument("--root", type=Path, default=Path("/"), help="Root of the system to install into.")
    parser.add_argument("--dry-run", action="store_true", help="With --install: say what would change, change nothing.")
    args = parser.parse_args(argv)

    if args.device_class:
        name, why = args.device_class, "given with --device-class"
    else:
        name, why = choose_device_class(args.config, args.class_dir, args.root)
    try:
        device_class = load_device_class(name, args.class_dir)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"render_unit: {exc.path}: {problem}", file=sys.stderr)
        return 3
    if not args.install:
        sys.stdout.write(render_unit(device_class))
        return 0
    print(f"render_unit: device class {name} ({why})", file=sys.stderr)
    for action in install_unit(device_class, args.root, dry_run=args.dry_run):
        print(f"render_unit: {action}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
