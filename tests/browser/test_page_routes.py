"""``api_service.endpoints.page``: what is served, with which types, CSP and cache headers, and what is not."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from api_service.endpoints import page
from api_service.errors import exception_handlers
from shared.crypto.keyring import Keyring
from shared.settings import Settings

pytestmark = pytest.mark.unit

BASE_ENV = {"REDIS_URL": "redis://127.0.0.1:1/0", "STRONGROOM_KEYRING": Keyring.generate_json()}


def settings(**env: str) -> Settings:
    return Settings.from_env({**BASE_ENV, **env})


def client(config: Settings) -> TestClient:
    app = Starlette(routes=page.routes, exception_handlers=exception_handlers())
    app.state.settings = config
    return TestClient(app)


@pytest.fixture
def http() -> TestClient:
    return client(settings(STRONGROOM_S3_ENDPOINT_URL="http://127.0.0.1:8333"))


def test_page_has_csp_and_no_inline_scripts(http: TestClient) -> None:
    response = http.get("/app/")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    csp = response.headers["content-security-policy"]
    assert "default-src 'self'" in csp
    assert "connect-src 'self' http://127.0.0.1:8333;" in csp
    assert "frame-ancestors 'none'" in csp and "'unsafe-inline'" not in csp
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["cache-control"] == "no-cache"
    # Every <script> loads a same-origin file: an inline script would be blocked by the policy anyway.
    scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", response.text, re.S)
    assert scripts and all('src="static/' in attrs and not body.strip() for attrs, body in scripts)


def test_bare_path_redirects_relative_to_the_slash(http: TestClient) -> None:
    response = http.get("/app", follow_redirects=False)
    assert response.status_code == 308
    assert response.headers["location"] == "app/"


@pytest.mark.parametrize(("name", "kind"), sorted(page.STATIC_FILES.items()))
def test_every_listed_file_exists_with_its_type(http: TestClient, name: str, kind: str) -> None:
    response = http.get(f"/app/static/{name}")
    assert response.status_code == 200
    assert response.headers["content-type"] == kind
    assert response.content == (page.STATIC_DIR / name).read_bytes()


def test_etag_revalidation_answers_304(http: TestClient) -> None:
    first = http.get("/app/static/app.js")
    again = http.get("/app/static/app.js", headers={"If-None-Match": first.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    assert http.get("/app/static/app.js", headers={"If-None-Match": '"other"'}).status_code == 200


@pytest.mark.parametrize(
    "path",
    ["index.html", "../endpoints/page.py", "..%2Fendpoints%2Fpage.py", "vendor/", "vendor", "nope.js", "APP.JS"],
)
def test_unlisted_paths_are_404(http: TestClient, path: str) -> None:
    response = http.get(f"/app/static/{path}")
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/problem+json")


def test_csp_names_the_public_endpoint_and_virtual_host_buckets() -> None:
    config = settings(
        STRONGROOM_S3_ENDPOINT_URL="http://seaweed:8333",
        STRONGROOM_S3_PUBLIC_ENDPOINT_URL="https://S3.Example.com:9000/ignored/path",
        STRONGROOM_S3_ADDRESSING_STYLE="virtual",
        STRONGROOM_S3_BUCKET="art",
    )
    assert page.storage_origins(config) == ("https://s3.example.com:9000", "https://art.s3.example.com:9000")


def test_csp_on_aws_lists_the_regional_and_global_hosts() -> None:
    origins = page.storage_origins(settings(AWS_REGION="eu-west-1", STRONGROOM_S3_BUCKET="art"))
    assert "https://s3.eu-west-1.amazonaws.com" in origins
    assert "https://art.s3.eu-west-1.amazonaws.com" in origins


def test_a_hostile_endpoint_cannot_inject_policy() -> None:
    config = settings(STRONGROOM_S3_ENDPOINT_URL="http://x;script-src *")
    assert page.storage_origins(config) == ()
    assert "script-src *" not in page.content_security_policy(config)


def test_vendored_files_match_their_recorded_hashes() -> None:
    vendor = page.STATIC_DIR / "vendor"
    table = (vendor / "README.md").read_text()
    for name in ("ethers.min.js", "nacl-fast.min.js"):
        digest = hashlib.sha256(Path(vendor / name).read_bytes()).hexdigest()
        assert f"| {name} |" in table and digest in table, name


def test_the_api_route_table_serves_the_page() -> None:
    from api_service.routes import routes

    paths = {getattr(route, "path", None) for route in routes()}
    assert {route.path for route in page.routes} <= paths


def test_config_names_the_storage_origins_and_delivery_mode() -> None:
    http = client(settings(STRONGROOM_S3_CORS_ORIGINS="http://127.0.0.1:8000,https://app.example"))
    response = http.get("/app/config.json")
    assert response.status_code == 200
    assert response.json() == {
        "storage_origins": ["http://127.0.0.1:8000", "https://app.example"],
        "delivery_mode": "presigned",
    }
    assert response.headers["cache-control"] == "no-store"
    assert "default-src 'self'" in response.headers["content-security-policy"]


def test_previews_may_use_blob_images_but_nothing_else_inline(http: TestClient) -> None:
    csp = http.get("/app/").headers["content-security-policy"]
    assert "img-src 'self' data: blob:;" in csp
    assert "object-src 'none'" in csp and "frame-src" not in csp  # default-src 'self': no blob: frames
