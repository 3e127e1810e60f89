"""`edgefleet bundle ...` and `edgefleet keys ...`: build, verify and inspect signed bundles."""

from __future__ import annotations

import tempfile
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import typer

from edgefleet.cli.errors import fail_with
from edgefleet.common.exit_codes import ExitCode
from edgefleet.common.output import Format, FormatOption, existing_file, fail, print_data
from edgefleet.protocol.bundle import extract_bundle, verify_files, verify_manifest
from edgefleet.protocol.errors import BundleError
from edgefleet.protocol.signing import key_id, load_private_key, load_public_key, load_trusted_keys, write_keypair

if TYPE_CHECKING:
    import numpy as np

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
    model: Path = typer.Argument(..., help="The model: ONNX (.onnx) or TFLite (.tflite)."),
    name: str = typer.Option(..., help="Model name, e.g. digits."),
    version: str = typer.Option(..., help="Model version, e.g. 1.0.0."),
    device_class: str = typer.Option(..., "--device-class", help="Device class the bundle is for."),
    key: Path = typer.Option(..., "--key", help="Private signing key (PEM)."),
    out: Path = typer.Option(..., "--out", "-o", help="Bundle archive to write."),
    parent: str | None = typer.Option(None, help="Digest of the bundle this one derives from."),
    mirror: list[str] = typer.Option(
        [], "--mirror", help="HTTP(S) URL template with {sha256} where devices can also download the files."
    ),
    test_inputs: list[Path] = typer.Option(
        [], "--test-inputs",
        help="A .npz of real inputs (one array per input name; rows along the first axis): one test vector "
        "each, repeatable. Without it, inputs are generated (every dynamic dimension 2, integers 0..9).",
    ),
    model_format: str | None = typer.Option(
        None, "--model-format", help="onnx or tflite; default from the file (suffix, or TFLite's identifier)."
    ),
    rtol: float = typer.Option(1e-4, "--rtol", min=0, help="Relative tolerance of the device's self-test."),
    min_version: str | None = typer.Option(
        None, "--min-version", callback=lambda v: _pep440(v),
        help="Devices running this bundle take an older version of the model than this only when a deployment "
        "allows the downgrade explicitly (e.g. after a security fix).",
    ),
    atol: float = typer.Option(1e-5, "--atol", min=0, help="Absolute tolerance of the device's self-test."),
    fmt: Format = FormatOption,
) -> None:
    """Describe a model, compute its test vectors with its own runtime (ONNX Runtime or LiteRT), sign and
    pack it.

    Example: edgefleet bundle create model.onnx --name digits --version 1.0.0 --device-class rpi4
    --key keys/signing.key -o digits.bundle --test-inputs rows.npz
    """
    from edgefleet.compression.builder import build_bundle, detect_model_format

    for path in (model, key, *test_inputs):
        if not path.is_file():
            fail(f"{path}: no such file", ExitCode.NOT_FOUND)
    if model_format not in (None, "onnx", "tflite"):
        fail(f"--model-format {model_format!r}: use onnx or tflite", ExitCode.USAGE)
    chosen: Literal["onnx", "tflite"] = (
        detect_model_format(model) if model_format is None else "tflite" if model_format == "tflite" else "onnx"
    )
    feeds = [_load_inputs(path) for path in test_inputs] or None
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
            model_format=chosen,
            test_inputs=feeds,
            rtol=rtol,
            atol=atol,
            min_version=min_version,
        )
    except (BundleError, ValueError) as exc:
        fail(str(exc), ExitCode.BUNDLE_INVALID)
    print_data({"bundle": str(path), "digest": digest, "name": name, "version": version}, fmt)


def _pep440(value: str | None) -> str | None:
    from packaging.version import InvalidVersion, Version

    if value is not None:
        try:
            Version(value)
        except InvalidVersion:
            raise typer.BadParameter(f"{value!r} is not a PEP 440 version (e.g. 2.1.0)") from None
    return value


def _load_inputs(path: Path) -> dict[str, np.ndarray]:
    """The arrays of a .npz (no pickled objects), by input name; exit 2 with the reason if it is not one."""
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as archive:
            return {name: np.asarray(archive[name]) for name in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        fail(f"{path}: not a .npz of input arrays ({exc})", ExitCode.USAGE)


@bundle_app.command("verify")
def bundle_verify(
    bundle: Path = typer.Argument(..., callback=existing_file, dir_okay=False, help="Bundle archive."),
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
    bundle: Path = typer.Argument(..., callback=existing_file, dir_okay=False, help="Bundle archive."),
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
