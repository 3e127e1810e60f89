"""ed25519 keys for signing bundle manifests: generation, loading, key ids, sign and verify."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edgefleet.protocol.errors import SignatureError

__all__ = [
    "TrustedKeys",
    "generate_keypair",
    "key_id",
    "load_private_key",
    "load_public_key",
    "load_trusted_keys",
    "sign_bytes",
    "verify_bytes",
    "write_keypair",
]

TrustedKeys = dict[str, Ed25519PublicKey]


def generate_keypair() -> tuple[bytes, bytes]:
    """A new key pair as (private PKCS#8 PEM, public SubjectPublicKeyInfo PEM)."""
    private = Ed25519PrivateKey.generate()
    private_pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private_pem, public_pem


def write_keypair(
    folder: Path, *, private_name: str = "signing.key", public_name: str = "signing.pub"
) -> tuple[Path, Path]:
    """Generate a key pair into ``folder``: the private key readable by its owner only."""
    folder.mkdir(parents=True, exist_ok=True)
    private_pem, public_pem = generate_keypair()
    private_path, public_path = folder / private_name, folder / public_name
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(private_pem)
    public_path.write_bytes(public_pem)
    return private_path, public_path


def key_id(public_key: Ed25519PublicKey) -> str:
    """A short stable name for a public key: the first 16 hex digits of sha256 of its raw bytes."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def load_private_key(path: Path) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError(f"{path}: not an ed25519 private key")
    return key


def load_public_key(pem: bytes, *, source: str = "key") -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(pem)
    except ValueError as exc:
        raise SignatureError(f"{source}: not a PEM public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError(f"{source}: not an ed25519 public key")
    return key


def load_trusted_keys(paths: list[Path]) -> TrustedKeys:
    """Load PEM public keys from files, indexed by key id."""
    keys: TrustedKeys = {}
    for path in paths:
        key = load_public_key(Path(path).read_bytes(), source=str(path))
        keys[key_id(key)] = key
    return keys


def sign_bytes(private_key: Ed25519PrivateKey, data: bytes) -> bytes:
    return private_key.sign(data)


def verify_bytes(trusted: TrustedKeys, signer: str, signature: bytes, data: bytes) -> None:
    """Raise SignatureError unless ``signature`` over ``data`` is valid for the trusted key ``signer``."""
    key = trusted.get(signer)
    if key is None:
        raise SignatureError(f"manifest signed by key {signer}, which is not trusted")
    try:
        key.verify(signature, data)
    except InvalidSignature:
        raise SignatureError(f"invalid signature by key {signer}: manifest altered or forged") from None
