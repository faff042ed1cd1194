"""Hostile requests against `strongroom api` as deployed (uvicorn with the production options, real Valkey and
SeaweedFS): each is refused with problem+json and the same process goes on answering."""

from __future__ import annotations

import secrets
from collections.abc import Callable

import httpx
import pytest

from shared.auth.signer import sign_request
from tests.helpers.services import ApiHandle

pytestmark = pytest.mark.integration


def test_deeply_nested_body_is_refused_and_the_api_stays_up(api_factory: Callable[..., ApiHandle]) -> None:
    """Issue 10, item 1: this body (about 200 KB, inside the body limit, signed by a fresh key) made the API die
    with SIGSEGV before answering."""
    api = api_factory()
    pid = api.pid
    key = "0x" + secrets.token_hex(32)
    body = b'{"agent":"privacy-audit","input":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    url = f"{api.url}/api/v1/operations"
    headers = {**sign_request(key, "POST", url, body), "Content-Type": "application/json"}
    try:
        with httpx.Client(timeout=30) as http:
            refused = http.post(url, content=body, headers=headers)
            assert refused.status_code == 422, refused.text
            assert refused.headers["content-type"].startswith("application/problem+json")
            assert refused.json()["code"] == "json_too_deep"
            listed = http.get(url, headers=sign_request(key, "GET", url))
            assert listed.status_code == 200, listed.text
        assert api.running() and api.pid == pid
    finally:
        api.stop()
