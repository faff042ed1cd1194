"""The OpenAPI document against the live API.

1. Real responses of every endpoint (a finished privacy-audit operation, errors, probes) validate against the
   schema the document gives for that path, method, status and media type.
2. schemathesis generates requests from the document; a ``requests`` auth hook signs each one exactly as sent
   (ERC-8128), so generated requests reach the endpoints instead of stopping at 401. It must find no 5xx and no
   response that breaks the document. Bounded: a few examples per operation, no shrinking, a deadline.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from eth_account import Account
from hypothesis import HealthCheck, Phase, given, settings
from jsonschema import Draft202012Validator
from requests.auth import AuthBase

from api_service.openapi import openapi_document
from shared.auth.signer import sign_request
from shared.crypto.keywrap import generate_encryption_keypair

pytestmark = pytest.mark.integration

DOCUMENT = openapi_document()


def response_schema(template: str, method: str, status: int, media_type: str) -> dict[str, Any] | None:
    responses = DOCUMENT["paths"][template][method.lower()]["responses"]
    assert str(status) in responses, f"{method} {template} answered undocumented {status}"
    content = responses[str(status)].get("content")
    if content is None:
        return None
    assert media_type in content, f"{method} {template} {status}: undocumented media type {media_type}"
    return {**content[media_type]["schema"], "components": DOCUMENT["components"]}


def check(response: httpx.Response, template: str) -> None:
    media_type = response.headers.get("content-type", "").split(";")[0].strip()
    schema = response_schema(template, response.request.method, response.status_code, media_type)
    if schema is not None and media_type.endswith("json"):
        errors = [e.message for e in Draft202012Validator(schema).iter_errors(response.json())]
        assert not errors, f"{response.request.method} {template} {response.status_code}: {errors}"


class Signer(AuthBase):
    """Signs the prepared request (final URL and body bytes): what the server verifies is what was sent."""

    def __init__(self) -> None:
        self.key = "0x" + secrets.token_hex(32)
        self.address = Account.from_key(self.key).address.lower()
        self.count = 0

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        body = request.body or b""
        assert isinstance(body, str | bytes), "schemathesis sends prepared (non-streamed) bodies"
        raw = body.encode() if isinstance(body, str) else body
        assert request.method is not None and request.url is not None
        request.headers.update(sign_request(self.key, request.method, request.url, raw))
        self.count += 1
        return request

    def httpx_headers(self, method: str, url: str, body: bytes = b"") -> dict[str, str]:
        return sign_request(self.key, method, url, body)


@pytest.fixture(scope="module")
def live_api(api_factory: Callable[..., Any], celery_worker: object) -> Iterator[Any]:
    handle = api_factory(STRONGROOM_RATE_LIMIT_PER_MINUTE="0")
    yield handle
    handle.stop()


def test_real_responses_match_the_document(live_api: Any) -> None:
    signer = Signer()
    base = live_api.url
    ops = "/api/v1/operations"
    http = httpx.Client(timeout=10)

    def call(method: str, path: str, template: str, body: bytes = b"", **headers: str) -> httpx.Response:
        url = base + path
        signed = signer.httpx_headers(method, url, body)
        response = http.request(method, url, content=body, headers={**signed, **headers}, follow_redirects=False)
        check(response, template)
        return response

    _, public_key = generate_encryption_keypair()
    body = json.dumps(
        {"agent": "privacy-audit", "input": {"text": "mail a@b.example"}, "encryption_public_key": public_key}
    )
    created = call("POST", ops, ops, body.encode(), **{"Content-Type": "application/json"})
    assert created.status_code == 202
    op = created.json()["id"]
    one = f"{ops}/{{operation_id}}"
    deadline = time.monotonic() + 60
    while (
        call("GET", f"{ops}/{op}", one).json()["status"] not in ("succeeded", "failed") and time.monotonic() < deadline
    ):
        time.sleep(0.3)
    artifacts = call("GET", f"{ops}/{op}/artifacts", f"{one}/artifacts").json()["artifacts"]
    artifact = f"{one}/artifacts/{{name}}"
    assert call("GET", artifacts[0]["download_url"], artifact).status_code == 307
    assert call("GET", artifacts[0]["download_url"], artifact, Accept="application/json").status_code == 200
    assert call("GET", f"{ops}/{op}/artifacts/missing.txt", artifact).status_code == 404
    assert call("GET", ops + "?limit=5", ops).status_code == 200
    assert call("GET", ops + "?limit=0", ops).status_code == 422
    assert call("GET", f"{ops}/{op}/access-log", f"{one}/access-log").status_code == 200
    assert call("POST", f"{ops}/{op}/cancel", f"{one}/cancel").status_code == 409
    assert call("DELETE", artifacts[0]["download_url"], artifact).status_code == 204
    unsigned = http.get(base + ops)
    check(unsigned, ops)
    assert unsigned.status_code == 401
    for probe in ("/healthz", "/readyz"):
        check(http.get(base + probe), probe)
    http.close()


# ``ignored_auth``: the session signs every request, including those this check means to send unsigned (unsigned
# requests are covered above and in test_auth_http). ``positive_data_acceptance``: a schema-valid body can still
# name an agent this server does not run or a key that is not a valid X25519 point; those 422s are by design.
EXCLUDED_CHECKS = [schemathesis.checks.ignored_auth, schemathesis.checks.positive_data_acceptance]


def test_schemathesis_finds_no_server_errors_or_schema_violations(live_api: Any) -> None:
    """Every operation of the document, a bounded number of generated, signed requests each.

    Driven from one test (not ``schemathesis.pytest.from_fixture``, which does not run under pytest 9).
    """
    api_schema = schemathesis.openapi.from_url(f"{live_api.url}/api/v1/openapi.json")
    signer = Signer()
    session = requests.Session()
    session.auth = signer
    operations = [result.ok() for result in api_schema.get_all_operations()]  # type: ignore[union-attr]
    assert len(operations) >= 11

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=8,
            deadline=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        def run(case: Any) -> None:
            case.call_and_validate(session=session, excluded_checks=EXCLUDED_CHECKS)

        run()
    session.close()
    assert signer.count >= 2 * len(operations)  # the run really reached the API, signed
