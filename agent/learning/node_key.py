"""The device's SuperNode authentication key: one EC (P-384) key pair, created once in the data dir.

A campaign SuperLink that runs with `--enable-supernode-auth` admits only SuperNodes whose public
key the coordinator registered with it; the agent reports the public key in its ReportedState and
starts `flower-supernode --auth-supernode-private-key` with this file. Flower 1.40 loads that file
with `load_ssh_private_key` (OpenSSH format, unencrypted) and wants a NIST curve; RegisterNode takes
the public key as PEM SubjectPublicKeyInfo, which is what `public_pem` holds.
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

__all__ = ["NODE_KEY_FILE", "NodeKey", "load_or_create_node_key"]

log = logging.getLogger(__name__)

NODE_KEY_FILE = "supernode-auth.key"
_MODE = 0o600


@dataclass(frozen=True)
class NodeKey:
    """Where the private key lies and its public key (PEM SubjectPublicKeyInfo, as RegisterNode wants)."""

    path: Path
    public_pem: str


def _public_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode("ascii")
    )


def _load(path: Path) -> ec.EllipticCurvePrivateKey | None:
    try:
        key = serialization.load_ssh_private_key(path.read_bytes(), password=None)
    except FileNotFoundError:
        return None
    except (ValueError, UnsupportedAlgorithm) as exc:
        # Nothing is lost by replacing it: each campaign's SuperLink registers the key afresh.
        log.warning("SuperNode key %s is unreadable (%s); creating a new one", path, exc)
        return None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        log.warning("SuperNode key %s is a %s, not an EC key; creating a new one", path, type(key).__name__)
        return None
    if stat.S_IMODE(path.stat().st_mode) != _MODE:
        log.warning("SuperNode key %s was readable by others; setting its mode to 0600", path)
        path.chmod(_MODE)
    return key


def _write_atomically(path: Path, data: bytes) -> None:
    """Write to a 0600 temporary file next to `path`, fsync, rename over it, fsync the directory."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, _MODE)
    try:
        os.fchmod(fd, _MODE)  # O_CREAT's mode is cut by the umask, and an old tmp keeps its own
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load_or_create_node_key(data_dir: Path) -> NodeKey:
    """The key in `data_dir`, created (P-384, mode 0600) when there is none; raises OSError if it cannot be."""
    path = Path(data_dir) / NODE_KEY_FILE
    key = _load(path)
    if key is None:
        path.parent.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP384R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        )
        _write_atomically(path, pem)
        log.info("created the SuperNode authentication key %s", path)
    return NodeKey(path, _public_pem(key))
