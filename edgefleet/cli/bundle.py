"""`edgefleet bundle ...` and `edgefleet keys ...`: build, verify and inspect signed bundles."""

from __future__ import annotations

import tempfile
from pathlib import Path

import typer

from edgefleet.cli.errors import fail_with
from edgefleet.common.exit_codes import ExitCode
from edgefleet.common.output import Format, FormatOption, fail, print_data
from edgefleet.protocol.bundle import extract_bundle, verify_files, verify_manifest
from edgefleet.protocol.errors import BundleError
from edgefleet.protocol.signing import key_id, load_private_key, load_public_key, load_trusted_keys, write_keypair

bundle_app = typer.Typer(help="Build, verify and inspect signed model bundles.", no_args_is_help=True)
keys_app = typer.Typer(help="Signing keys for bundles.", no_args_is_help=True)


@keys_app.command("generate")
def keys_generate(
    out: Path = typer.Option(Path("keys"), "--out", help="Folder for signing.key and signing.pub."),
    force: bool = typer.Option(False, "--force", help="Overwrite existing keys."),
    fmt: Format = FormatOption,
) -> None:
    """Generate an ed25519 key pair: signing.key (private, mode 0600) and signing.pub.

    Example: edgefleet keys generate --out ./keys
    """
    if (out / "signing.key").exists() and not force:
        fail(f"{out / 'signing.key'} exists; pass --force to replace it", ExitCode.USAGE)
    private_path, public_path = write_keypair(out)
    kid = key_id(load_public_key(public_path.read_bytes()))
    print_data({"private_key": str(private_path), "public_key": str(public_path), "key_id": kid}, fmt)


@bundle_app.command("create")
def bundle_create(
    model: Path = typer.Argument(..., exists=True, dir_okay=False, help="The ONNX model."),
    name: str = typer.Option(..., help="Model name, e.g. digits."),
    version: str = typer.Option(..., help="Model version, e.g. 1.0.0."),
    device_class: str = typer.Option(..., "--device-class", help="Device class the bundle is for."),
    key: Path = typer.Option(..., "--key", exists=True, help="Private signing key (PEM)."),
    out: Path = typer.Option(..., "--out", "-o", help="Bundle archive to write."),
    parent: str | None = typer.Option(None, help="Digest of the bundle this one derives from."),
    mirror: list[str] = typer.Option(
        [], "--mirror", help="HTTP(S) URL template with {sha256} where devices can also download the files."
    ),
    fmt: Format = FormatOption,
) -> None:
    """Describe an ONNX model, compute test vectors with ONNX Runtime, sign and pack it.

    Example: edgefleet bundle create model.onnx --name digits --version 1.0.0 --device-class rpi4
    --key keys/signing.key -o digits.bundle
    """
    from edgefleet.compression.builder import build_bundle

    try:
        private_key = load_private_key(key)
        path, digest = build_bundle(
            model,
            out,
            name=name,
            version=version,
            device_class=device_class,
            private_key=private_key,
            parent=parent,
            mirrors=mirror,
        )
    except (BundleError, ValueError) as exc:
        fail(str(exc), ExitCode.BUNDLE_INVALID)
    print_data({"bundle": str(path), "digest": digest, "name": name, "version": version}, fmt)


@bundle_app.command("verify")
def bundle_verify(
    bundle: Path = typer.Argument(..., exists=True, dir_okay=False, help="Bundle archive."),
    trusted: list[Path] = typer.Option(..., "--trusted-key", help="Trusted public key (PEM); repeatable."),
    fmt: Format = FormatOption,
) -> None:
    """Check layout, signature and every file hash; exit 4 with the reason when any fails.

    Example: edgefleet bundle verify digits.bundle --trusted-key keys/signing.pub
    """
    with tempfile.TemporaryDirectory() as tmp:
        try:
            signed = extract_bundle(bundle, Path(tmp))
            manifest = verify_manifest(signed, load_trusted_keys(trusted))
            verify_files(manifest, lambda name, _sha: Path(tmp) / name)
        except BundleError as exc:  # a SignatureError is one
            fail_with(exc, prefix=f"{bundle}: ")
    print_data({"bundle": str(bundle), "valid": True, "digest": signed.digest, "key_id": signed.key_id}, fmt)


@bundle_app.command("inspect")
def bundle_inspect(
    bundle: Path = typer.Argument(..., exists=True, dir_okay=False, help="Bundle archive."),
    fmt: Format = FormatOption,
) -> None:
    """Print a bundle's manifest without verifying it.

    Example: edgefleet bundle inspect digits.bundle --format json
    """
    from edgefleet.protocol.bundle import Manifest

    with tempfile.TemporaryDirectory() as tmp:
        try:
            signed = extract_bundle(bundle, Path(tmp))
            manifest = Manifest.model_validate_json(signed.manifest)
        except (BundleError, ValueError) as exc:
            fail(f"{bundle}: {exc}", ExitCode.BUNDLE_INVALID)
    data = manifest.model_dump(mode="json", exclude={"test_vectors", "stored_test_vectors"})
    data["digest"] = signed.digest
    data["key_id"] = signed.key_id
    data["test_vectors"] = len(manifest.test_vectors) + len(manifest.stored_test_vectors)
    data["stored_test_vectors"] = [v.file for v in manifest.stored_test_vectors]
    print_data(data, fmt)
