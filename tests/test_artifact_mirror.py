"""The HTTP artifact mirror: Range requests on the coordinator's API, and agents that download over
HTTP first and fall back to MQTT chunks, on a real coordinator, real agents and a real Mosquitto."""

from __future__ import annotations

import functools
import hashlib
import http.server
import tempfile
import threading
from pathlib import Path
from typing import ClassVar

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from edgefleet.agent.bundles.fetcher import HttpMirror, MirrorError
from edgefleet.common.mqtt import BrokerConfig
from edgefleet.coordinator.api.app import create_app
from edgefleet.coordinator.config import ApiServerConfig, CoordinatorConfig
from edgefleet.coordinator.service import Coordinator
from edgefleet.local.broker import free_port
from edgefleet.local.fleet import LocalFleet
from edgefleet.protocol.bundle import Manifest, SignedManifest, extract_bundle
from tests.conftest import DigitsModels, Keys, build

TOKEN = "mirror-test-token-0123456789"


def _app(tmp_path: Path, keys: Keys, *, public: bool) -> TestClient:
    # No lifespan (no `with`): the MQTT link never starts, and the artifact routes do not need it.
    config = CoordinatorConfig(
        data_dir=tmp_path / f"coord-{public}",
        trusted_keys=[keys.public],
        broker=BrokerConfig(),
        api=ApiServerConfig(public_artifacts=public),
    )
    return TestClient(create_app(Coordinator(config), token=TOKEN))


def _bundle_files(bundle: Path) -> Manifest:
    with tempfile.TemporaryDirectory() as tmp:
        return Manifest.model_validate_json(extract_bundle(bundle, Path(tmp)).manifest)


def _counter(fleet: LocalFleet, name: str, kind: str) -> float:
    text = fleet.http.get("/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels.get("kind") == kind:
                return float(sample.value)
    return 0.0


def test_range_requests_resume_a_download_and_bad_ranges_get_416(
    tmp_path: Path, keys: Keys, digits: DigitsModels
) -> None:
    bundle, digest = build(digits.v1, tmp_path / "v1.bundle", keys, version="1.0.0")
    http = _app(tmp_path, keys, public=False)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert http.post("/api/v1/bundles", content=bundle.read_bytes(), headers=auth).status_code == 201
    entry = _bundle_files(bundle).files[0]
    url = f"/api/v1/artifacts/file/{entry.sha256}"

    assert http.get(url).status_code == 401, "without [api] public_artifacts the mirror needs a token"
    whole = http.get(url, headers=auth)
    assert whole.status_code == 200 and whole.headers["etag"] == f'"{entry.sha256}"'
    assert hashlib.sha256(whole.content).hexdigest() == entry.sha256 and len(whole.content) == entry.size

    # Resume: the first 1000 bytes are on disk, the rest comes as one 206.
    rest = http.get(url, headers=auth | {"Range": "bytes=1000-"})
    assert rest.status_code == 206
    assert rest.headers["content-range"] == f"bytes 1000-{entry.size - 1}/{entry.size}"
    assert hashlib.sha256(whole.content[:1000] + rest.content).hexdigest() == entry.sha256
    middle = http.get(url, headers=auth | {"Range": "bytes=10-19"})
    assert (middle.status_code, middle.content) == (206, whole.content[10:20])
    tail = http.get(url, headers=auth | {"Range": "bytes=-5"})
    assert (tail.status_code, tail.content) == (206, whole.content[-5:])

    for bad in (f"bytes={entry.size}-", "bytes=20-10", "bytes=0-1,5-9", "items=0-1", "bytes=-0"):
        response = http.get(url, headers=auth | {"Range": bad})
        assert response.status_code == 416, bad
        assert response.headers["content-range"] == f"bytes */{entry.size}" and "detail" in response.json()

    manifest = http.get(f"/api/v1/artifacts/manifest/{digest}", headers=auth)
    assert SignedManifest.from_bytes(manifest.content).digest == digest
    assert http.get(f"/api/v1/artifacts/file/{'0' * 64}", headers=auth).status_code == 404
    assert http.get("/api/v1/artifacts/file/..%2F..%2Fetc", headers=auth).status_code in (404, 422)
    assert http.get(f"/api/v1/artifacts/bundle/{digest}", headers=auth).status_code == 422

    public = _app(tmp_path, keys, public=True)
    assert public.post("/api/v1/bundles", content=bundle.read_bytes(), headers=auth).status_code == 201
    assert public.get(url).content == whole.content, "public_artifacts serves artifacts without a token"
    assert public.get("/api/v1/bundles").status_code == 401, "and nothing else"


def _mirror_agent(fleet: LocalFleet, device_id: str, mirror: str, token_file: Path | None = None) -> None:
    fetch: dict[str, object] = {"chunk_timeout_s": 3.0, "retry_backoff_s": 1.0, "http_mirror": mirror}
    if token_file is not None:
        fetch["http_token_file"] = str(token_file)
    fleet.add_agent(device_id, fetch=fetch)
    fleet.start_agent(device_id)
    fleet.wait_registered([device_id])  # a deploy by device id needs the coordinator to know it (else 404)


@pytest.mark.slow
def test_an_agent_with_a_mirror_downloads_over_http_and_resumes_partial_files(
    tmp_path: Path, fleet: LocalFleet, keys: Keys, digits: DigitsModels
) -> None:
    url = fleet.start_coordinator()
    response = fleet.http.post("/api/v1/tokens", json={"role": "read-only", "name": "gw-http mirror"})
    assert response.status_code == 201, response.text
    token_file = tmp_path / "mirror.token"
    token_file.write_text(response.json()["token"])
    _mirror_agent(fleet, "gw-http", url, token_file)
    bundle, digest = build(digits.v1, tmp_path / "v1.bundle", keys, version="1.0.0")
    fleet.upload(bundle)

    fleet.deploy(digest, ["gw-http"])
    fleet.wait_active(digest, ["gw-http"])

    entry = _bundle_files(bundle).files[0]
    assert _counter(fleet, "edgefleet_coordinator_http_artifact_bytes_served_total", "file") >= entry.size
    assert _counter(fleet, "edgefleet_coordinator_http_artifact_bytes_served_total", "manifest") > 0
    assert _counter(fleet, "edgefleet_coordinator_chunk_bytes_served_total", "file") == 0, "no MQTT chunks"
    assert _counter(fleet, "edgefleet_coordinator_chunk_bytes_served_total", "manifest") == 0
    assert "over HTTP" in (fleet.workdir / "gw-http.log").read_text()

    # The agent's mirror client on its own: a partial file is resumed with a Range request...
    mirror = HttpMirror(url, timeout_s=5, token_file=token_file)
    blob = fleet.agents["gw-http"].data_dir / "store" / "blobs" / entry.sha256
    partial = tmp_path / "resume.part"
    partial.write_bytes(blob.read_bytes()[:1000])
    mirror.fetch("file", entry.sha256, partial, threading.Event())
    assert partial.read_bytes() == blob.read_bytes() and mirror.bytes_received == entry.size - 1000
    # ...a prefix that is not the artifact's is caught by the hash and discarded...
    partial.write_bytes(b"x" * 1000)
    with pytest.raises(MirrorError, match="expected"):
        mirror.fetch("file", entry.sha256, partial, threading.Event())
    assert not partial.exists()
    # ...and a partial file longer than the artifact (416) starts over.
    partial.write_bytes(blob.read_bytes() + b"junk")
    mirror.fetch("file", entry.sha256, partial, threading.Event())
    assert partial.read_bytes() == blob.read_bytes()


@pytest.mark.slow
def test_an_agent_whose_mirror_is_dead_still_activates_over_mqtt(
    tmp_path: Path, fleet: LocalFleet, keys: Keys, digits: DigitsModels
) -> None:
    fleet.start_coordinator()
    _mirror_agent(fleet, "gw-dead", f"http://127.0.0.1:{free_port()}")
    bundle, digest = build(digits.v1, tmp_path / "v1.bundle", keys, version="1.0.0")
    fleet.upload(bundle)

    fleet.deploy(digest, ["gw-dead"])
    fleet.wait_active(digest, ["gw-dead"])

    entry = _bundle_files(bundle).files[0]
    assert _counter(fleet, "edgefleet_coordinator_chunk_bytes_served_total", "file") == entry.size
    assert _counter(fleet, "edgefleet_coordinator_http_artifact_bytes_served_total", "file") == 0
    log = (fleet.workdir / "gw-dead.log").read_text()
    assert "HTTP mirror failed for manifest" in log and "HTTP mirror failed for file" in log
    assert "over MQTT" in log


class _Files(http.server.SimpleHTTPRequestHandler):
    """A static file server standing in for a CDN; `tampered` names files it serves wrong bytes for."""

    tampered: ClassVar[set[str]] = set()

    def do_GET(self) -> None:
        name = self.path.strip("/")
        if name in self.tampered:
            body = b"not the model" * 100
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        super().do_GET()

    def log_message(self, *_args: object) -> None:
        pass


@pytest.mark.slow
@pytest.mark.parametrize("tampered", [False, True])
def test_mirror_urls_signed_in_the_manifest_serve_the_files(
    tmp_path: Path, fleet: LocalFleet, keys: Keys, digits: DigitsModels, tampered: bool
) -> None:
    # Prepare: the bundle's file on a static server; the manifest names a dead mirror first, then it
    served = tmp_path / "cdn"
    served.mkdir()
    port = free_port()
    dead = f"http://127.0.0.1:{free_port()}/{{sha256}}"
    bundle, digest = build(digits.v1, tmp_path / "v1.bundle", keys, version="1.0.0",
                           mirrors=[dead, f"http://127.0.0.1:{port}/{{sha256}}"])  # fmt: skip
    entry = _bundle_files(bundle).files[0]
    with tempfile.TemporaryDirectory() as tmp:
        signed = extract_bundle(bundle, Path(tmp))
        (served / entry.sha256).write_bytes((Path(tmp) / entry.name).read_bytes())
    assert Manifest.model_validate_json(signed.manifest).mirrors[1].endswith("/{sha256}")
    _Files.tampered = {entry.sha256} if tampered else set()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), functools.partial(_Files, directory=str(served)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        fleet.start_coordinator()
        fleet.add_agent("gw-cdn")
        fleet.start_agent("gw-cdn")
        fleet.upload(bundle)
        # Execute
        fleet.deploy(digest, ["gw-cdn"])
        fleet.wait_active(digest, ["gw-cdn"])
    finally:
        server.shutdown()
    # Assert: the file came from the manifest's mirror (the dead one skipped) -- or, when the mirror
    # served other bytes, the hash caught it and the file came over MQTT after all.
    chunk_bytes = _counter(fleet, "edgefleet_coordinator_chunk_bytes_served_total", "file")
    log = (fleet.workdir / "gw-cdn.log").read_text()
    assert "manifest mirror failed for file" in log
    if tampered:
        assert chunk_bytes == entry.size and "expected" in log
    else:
        assert chunk_bytes == 0 and f"over HTTP from http://127.0.0.1:{port}/{entry.sha256}" in log
