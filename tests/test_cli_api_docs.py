"""The API's documentation on a real coordinator: /docs (Swagger UI) and /redoc work offline (every asset their
pages load is served by the coordinator itself), and the OpenAPI they render types the main routes."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from edgefleet.local.fleet import LocalFleet

_ASSET = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']""")


def test_docs_and_redoc_load_only_assets_the_coordinator_serves(fleet: LocalFleet) -> None:
    # Prepare
    url = fleet.start_coordinator()

    with httpx.Client(base_url=url, timeout=30) as http:  # no token: the pages and assets hold no data
        for page, script in (("/docs", "swagger-ui-bundle.js"), ("/redoc", "redoc.standalone.js")):
            # Execute
            html = http.get(page)
            assets = _ASSET.findall(html.text)

            # Assert: nothing from another host (a CDN, fonts), and each asset fetched from here.
            assert html.status_code == 200 and "text/html" in html.headers["content-type"]
            assert not re.search(r"https?://|//cdn|fonts\.googleapis", html.text), (page, html.text)
            assert any(a.endswith(script) for a in assets), (page, assets)
            for asset in assets:
                assert asset.startswith("/"), (page, asset)
                fetched = http.get(asset)
                assert fetched.status_code == 200 and len(fetched.content) > 1000, (page, asset, fetched.status_code)
            assert "/openapi.json" in html.text
        spec = http.get("/openapi.json")
        assert spec.status_code == 200 and spec.json()["openapi"].startswith("3.1")


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _rendered(profile: Path, page: str) -> str:
    """The DOM of ``page`` after headless Chromium ran its scripts, with every host but this one unresolvable."""
    assert CHROMIUM is not None
    command = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", f"--user-data-dir={profile}",
        "--virtual-time-budget=10000", "--dump-dom", page,
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=90, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_docs_and_redoc_render_the_api_in_a_browser_that_reaches_no_other_host(
    tmp_path: Path, fleet: LocalFleet
) -> None:
    # Prepare
    url = fleet.start_coordinator()

    # Execute: both pages in a fresh headless browser each, offline but for the coordinator.
    swagger = _rendered(tmp_path / "profile-docs", f"{url}/docs")
    redoc = _rendered(tmp_path / "profile-redoc", f"{url}/redoc")

    # Assert: the operations are on the page (a page whose script did not load stays an empty <div>).
    assert 'class="opblock-summary-path"' in swagger and "/api/v1/rollouts" in swagger, swagger[:2000]
    assert "Start a staged rollout" in redoc and "/api/v1/rollouts" in redoc, redoc[:2000]


# The routes whose answers clients and the CLI read, with the model each answers.
TYPED = {
    ("get", "/api/v1/bundles"): "Bundle", ("get", "/api/v1/bundles/{ref}"): "BundleDetail",
    ("post", "/api/v1/bundles"): "Uploaded", ("get", "/api/v1/devices"): "Device",
    ("get", "/api/v1/devices/{device_id}"): "Device", ("post", "/api/v1/deployments"): "Deployed",
    ("get", "/api/v1/rollouts"): "Rollout", ("post", "/api/v1/rollouts"): "RolloutDetail",
    ("get", "/api/v1/rollouts/{rollout_id}"): "RolloutDetail", ("get", "/api/v1/events"): "RolloutEvent",
    ("get", "/api/v1/models"): "Model", ("post", "/api/v1/models/{name}/versions/{version}/stage"): "Model",
    ("get", "/api/v1/alerts"): "Alert", ("get", "/api/v1/telemetry/rollups"): "Rollup",
    ("get", "/api/v1/labels"): "FleetLabels",
}  # fmt: skip


def _refs(schema: object) -> set[str]:
    """Every component a schema refers to, however nested (arrays, anyOf)."""
    if isinstance(schema, dict):
        found = {str(schema["$ref"]).rsplit("/", 1)[-1]} if "$ref" in schema else set()
        return found.union(*(_refs(v) for v in schema.values()))
    if isinstance(schema, list):
        return set().union(*(_refs(v) for v in schema))
    return set()


def test_the_openapi_types_the_main_answers_and_the_rollout_body(fleet: LocalFleet) -> None:
    # Prepare + Execute: the spec as the running coordinator serves it.
    url = fleet.start_coordinator()
    spec = httpx.get(f"{url}/openapi.json", timeout=30).json()

    # Assert: each main route answers a named model, and a rollout's body is the RolloutSpec with its gates.
    for (method, path), model in TYPED.items():
        operation = spec["paths"][path][method]
        answer = next(r for code, r in operation["responses"].items() if code.startswith("2"))
        assert model in _refs(answer["content"]["application/json"]["schema"]), (method, path)
    body = spec["paths"]["/api/v1/rollouts"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert _refs(body) == {"RolloutSpec"}
    rollout_spec = spec["components"]["schemas"]["RolloutSpec"]
    assert {"model", "version", "waves", "soak_s", "gates"} <= set(rollout_spec["properties"])
    assert set(rollout_spec["required"]) == {"model", "version"}
    assert "max_drift_alert_fraction" in spec["components"]["schemas"]["Gates"]["properties"]
    detail = spec["components"]["schemas"]["RolloutDetail"]["properties"]
    assert {"id", "status", "waves", "device_states"} <= set(detail)

    # A body the spec refuses is a 422 that names the field, not a server error.
    bad = httpx.post(f"{url}/api/v1/rollouts", json={"model": "digits", "version": "1", "waves": ["0%"]},
                     headers={"Authorization": f"Bearer {fleet.token}"}, timeout=30)  # fmt: skip
    assert bad.status_code == 422 and "waves" in bad.text
