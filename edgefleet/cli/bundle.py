"""`edgefleet bundle ...` and `edgefleet keys ...`: build, verify and inspect signed bundles."""

from __future__ import annotations

import tempfile
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

import typer

from edgefleet.cli.errors import fail_with
from edgefleet.common.exit_codes import ExitCode
from edgefleet.common.output import Format, FormatOption, existing_file, fail, print_data
from edgefleet.protocol.bundle import extract_bundle, verify_files, verify_manifest
from edgefleet.protocol.errors import BundleError
from edgefleet.protocol.model_card import (
    Asset,
    AssetRole,
    OutputRole,
    PreprocessingStep,
    SequenceSpec,
    StateTensor,
)
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
        [],
        "--test-inputs",
        help="A .npz of real inputs (one array per input name; rows along the first axis): one test vector "
        "each, repeatable. Without it, inputs are generated (every dynamic dimension 2, integers 0..9).",
    ),
    model_format: str | None = typer.Option(
        None, "--model-format", help="onnx or tflite; default from the file (suffix, or TFLite's identifier)."
    ),
    rtol: float = typer.Option(1e-4, "--rtol", min=0, help="Relative tolerance of the device's self-test."),
    min_version: str | None = typer.Option(
        None,
        "--min-version",
        callback=lambda v: _pep440(v),
        help="Devices running this bundle take an older version of the model than this only when a deployment "
        "allows the downgrade explicitly (e.g. after a security fix).",
    ),
    atol: float = typer.Option(1e-5, "--atol", min=0, help="Absolute tolerance of the device's self-test."),
    asset: list[str] = typer.Option(
        [],
        "--asset",
        metavar="ROLE=PATH",
        help="A file apps need beside the model, packed and hashed with it and served by the agent's GetAsset; "
        "ROLE is tokenizer, vocabulary, labels, config, preprocessing or other. Repeatable.",
    ),
    labels: Path | None = typer.Option(None, "--labels", help="Class names, one a line, in output index order."),
    output_role: list[str] = typer.Option(
        [],
        "--output-role",
        metavar="OUTPUT=ROLE",
        help="What an output holds: logits, probabilities, embedding, boxes, scores, class_ids, mask, state, other.",
    ),
    preprocessing: Path | None = typer.Option(
        None,
        "--preprocessing",
        help='JSON list of the steps an app applies, e.g. [{"op": "tokenize", "params": {"asset": "vocab.txt"}}].',
    ),
    description: str | None = typer.Option(None, "--description", help="What the model does, for app authors."),
    state: list[str] = typer.Option(
        [],
        "--state",
        metavar="INPUT=OUTPUT",
        help="Sequence serving: the agent feeds INPUT from the OUTPUT of the sequence's previous request (zeros "
        "at its start); apps name a sequence id instead of passing the state. Repeatable.",
    ),
    max_sequences: int = typer.Option(64, "--max-sequences", min=1, max=4096, help="Live sequences at once."),
    sequence_idle_s: float = typer.Option(
        60.0, "--sequence-idle-s", min=0.1, help="A sequence unused this long is dropped."
    ),
    fmt: Format = FormatOption,
) -> None:
    """Describe a model, compute its test vectors with its own runtime (ONNX Runtime or LiteRT), sign and
    pack it, with the model card an app on the device reads (ModelInfo) and the assets it needs.

    Example: edgefleet bundle create model.onnx --name digits --version 1.0.0 --device-class rpi4
    --key keys/signing.key -o digits.bundle --test-inputs rows.npz
    """
    from edgefleet.compression.builder import build_bundle, detect_model_format

    assets = [_asset(spec) for spec in asset]
    for path in (model, key, *test_inputs, *(p for p, _ in assets), *(f for f in (labels, preprocessing) if f)):
        if not path.is_file():
            fail(f"{path}: no such file", ExitCode.NOT_FOUND)
    card = _card(labels, output_role, preprocessing)
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
            assets=assets,
            description=description,
            sequence=_sequence(state, max_sequences, sequence_idle_s),
            **card,
        )
    except (BundleError, ValueError) as exc:
        fail(str(exc), ExitCode.BUNDLE_INVALID)
    print_data({"bundle": str(path), "digest": digest, "name": name, "version": version}, fmt)


def _asset(spec: str) -> tuple[Path, Asset]:
    """``ROLE=PATH`` as (path, Asset named after the file, its media type guessed from the suffix)."""
    import mimetypes

    role, sep, path = spec.partition("=")
    if not sep or role not in get_args(AssetRole):
        fail(f"--asset {spec!r}: use ROLE=PATH with ROLE one of {', '.join(get_args(AssetRole))}", ExitCode.USAGE)
    source = Path(path)
    media = mimetypes.guess_type(source.name)[0] or "application/octet-stream"
    return source, Asset(name=source.name, role=role, media_type=media)  # type: ignore[arg-type]


def _sequence(states: list[str], max_sequences: int, idle_s: float) -> SequenceSpec | None:
    pairs = []
    for spec in states:
        input_name, sep, output_name = spec.partition("=")
        if not sep or not input_name or not output_name:
            fail(f"--state {spec!r}: use INPUT=OUTPUT (the input fed from that output)", ExitCode.USAGE)
        pairs.append(StateTensor(input=input_name, output=output_name))
    return SequenceSpec(states=pairs, max_sequences=max_sequences, idle_timeout_s=idle_s) if pairs else None


def _card(labels: Path | None, output_roles: list[str], preprocessing: Path | None) -> dict[str, Any]:
    """The model card's keyword arguments for build_bundle; exit 2 naming what does not parse."""
    import json

    card: dict[str, Any] = {}
    if labels is not None:
        card["labels"] = [line.strip() for line in labels.read_text(encoding="utf-8").splitlines() if line.strip()]
    roles: dict[str, str] = {}
    for spec in output_roles:
        output, sep, role = spec.partition("=")
        if not sep or role not in get_args(OutputRole):
            fail(f"--output-role {spec!r}: use OUTPUT=ROLE with ROLE one of {', '.join(get_args(OutputRole))}",
                 ExitCode.USAGE)  # fmt: skip
        roles[output] = role
    card["output_roles"] = roles
    if preprocessing is not None:
        try:
            card["preprocessing"] = [
                PreprocessingStep.model_validate(step) for step in json.loads(preprocessing.read_text())
            ]
        except (ValueError, TypeError) as exc:
            fail(
                f"--preprocessing {preprocessing}: not a JSON list of steps ({str(exc).splitlines()[0]})",
                ExitCode.USAGE,
            )
    return card


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
