"""Hostile requests against `strongroom api` as deployed (uvicorn with the production options, real Valkey and
SeaweedFS): each is refused with problem+json and the same process goes on answering."""

from __future__ import annotations

import json
import secrets
import socket
from collections.abc import Callable

import httpx
import pytest

from shared.auth.signer import sign_request
from tests.helpers.raw_http import exchange
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


def _raw_get(port: int, fields: list[tuple[str, str]]) -> tuple[int, dict[str, str], bytes]:
    """Send a GET /healthz with exactly these header fields; the whole head goes out before anything is read."""
    head = "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields)
    return exchange(port, head.encode())


def test_header_limits_hold_under_the_production_server(api_factory: Callable[..., ApiHandle]) -> None:
    """Issue 10, item 7: too many header fields, or too many header bytes, are 431 problem+json from the
    server's protocol (before any app code runs); the same process then serves normal requests."""
    api = api_factory()
    pid = api.pid
    try:
        status, headers, body = _raw_get(api.port, [(f"x-h{i}", "1") for i in range(1000)])
        assert status == 431 and headers["content-type"] == "application/problem+json"
        assert json.loads(body)["code"] == "request_header_fields_too_large"
        status, headers, body = _raw_get(api.port, [("x-big", "a" * 40_000)])
        assert status == 431 and json.loads(body)["code"] == "request_header_fields_too_large"
        status, _, _ = _raw_get(api.port, [(f"x-h{i}", "1") for i in range(50)])  # within the limits
        assert status == 200
        with socket.create_connection(("127.0.0.1", api.port), timeout=30) as sock:  # 20 MB, refused mid-way
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Huge: ")
            try:
                for _ in range(20 * 16):
                    sock.sendall(b"a" * 65536)
                raise AssertionError("the server read 20 MB of one header")
            except (BrokenPipeError, ConnectionResetError):
                pass
        assert httpx.get(f"{api.url}/healthz", timeout=10).status_code == 200
        assert api.running() and api.pid == pid
    finally:
        api.stop()
