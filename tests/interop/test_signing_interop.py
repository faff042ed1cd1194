"""Signed requests interoperate with the JavaScript libraries wallets and agents use (ethers, viem).

JS -> Python: ``js/signing_sign.mjs`` builds the base and signs it on its own; the Python verifier must accept it.
Python -> JS: ``js/signing_verify.mjs`` rebuilds the base from the request and recovers the signer.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
from typing import Any
from urllib.parse import urlsplit

import pytest
from eth_account import Account

from shared.auth.base import normalize_authority
from shared.auth.signer import new_nonce, sign_request
from shared.auth.verifier import SignedRequest, Verifier
from shared.settings import Settings
from tests.helpers.node import requires_node, run_node

pytestmark = [
    pytest.mark.interop,
    requires_node,
]

KEY = "0x" + "5a" * 32
ADDRESS = Account.from_key(KEY).address.lower()
URLS = [
    "https://strongroom.example/api/v1/operations",
    "http://127.0.0.1:8080/api/v1/operations/demo_abc/artifacts/report%20v2.pdf?download=1&x=%C3%A9",
    "https://API.Example.com:443/api/v1/operations?limit=10&cursor=abc",
]


def node(script: str, payload: dict[str, Any]) -> dict[str, Any]:
    return run_node(script, payload)


class OnceStore:
    def __init__(self) -> None:
        self.keys: set[str] = set()

    async def set(self, key: str, value: bytes, *, nx: bool, ex: int) -> bool | None:
        if key in self.keys:
            return None
        self.keys.add(key)
        return True


def verify_in_python(method: str, url: str, body: bytes, headers: dict[str, str], now: float) -> str:
    target = urlsplit(url)
    request = SignedRequest(
        method=method,
        authority=normalize_authority(target.netloc, target.scheme),
        path=target.path,
        query="?" + target.query,
        headers=headers,
        body=body,
    )
    settings = Settings.from_env({"REDIS_URL": "redis://127.0.0.1:1/0"}, rate_limit_per_minute=0)
    verifier = Verifier(settings, OnceStore(), clock=lambda: now)  # type: ignore[arg-type]
    return asyncio.run(verifier.verify(request)).address


@pytest.mark.parametrize("lib", ["ethers", "viem"])
@pytest.mark.parametrize("url", URLS)
def test_js_signed_request_verifies_in_python(lib: str, url: str) -> None:
    body, created, nonce = b'{"agent":"privacy-audit"}', int(time.time()), new_nonce()
    signed = node(
        "signing_sign.mjs",
        {
            "lib": lib,
            "key": KEY,
            "method": "POST",
            "url": url,
            "body_b64": base64.b64encode(body).decode(),
            "created": created,
            "ttl": 60,
            "nonce": nonce,
            "chain_id": 1,
        },
    )
    assert verify_in_python("POST", url, body, signed["headers"], created) == ADDRESS
    # Deterministic ECDSA (RFC 6979): both implementations produce the very same header bytes.
    assert signed["headers"] == sign_request(KEY, "POST", url, body, created=created, nonce=nonce)


@pytest.mark.parametrize("url", URLS)
def test_python_signed_request_verifies_in_js(url: str) -> None:
    body = b"" if "artifacts" in url else b'{"x":1}'
    method = "GET" if not body else "POST"
    headers = sign_request(KEY, method, url, body)
    result = node(
        "signing_verify.mjs",
        {"method": method, "url": url, "body_b64": base64.b64encode(body).decode(), "headers": headers},
    )
    assert result["digest_ok"] is True
    assert result["keyid"] == f"erc8128:1:{ADDRESS}"
    assert result["ethers"] == result["viem"] == ADDRESS


def test_js_refuses_a_tampered_python_request() -> None:
    url = URLS[0]
    headers = sign_request(KEY, "POST", url, b"{}")
    result = node(
        "signing_verify.mjs",
        {"method": "PUT", "url": url, "body_b64": base64.b64encode(b"{}").decode(), "headers": headers},
    )
    assert result["ethers"] != ADDRESS and result["viem"] != ADDRESS


# --- an independent ERC-8128 client against the running API ---------------------------------------------------


def test_slicekit_erc8128_client_is_accepted_by_the_running_api(redis_url: str) -> None:
    """@slicekit/erc8128 signs Request-Bound requests its own way (``@query`` only when there is a query,
    ``content-digest`` only when there is a body, its own component order) and sends them with fetch to a real
    uvicorn serving the app: GET and POST, with and without a query, all accepted (ERC-8128 section 3.2.1)."""
    from tests.unit.api.api_harness import ApiHarness

    api = ApiHarness(redis_url)
    key = "0x" + secrets.token_hex(32)
    address = Account.from_key(key).address.lower()
    body = json.dumps({"agent": "privacy-audit", "input": {"text": "x"}, "encryption_public_key": api.public_key})
    with api.uvicorn() as port:
        base = f"http://127.0.0.1:{port}/api/v1/operations"
        json_headers = {"Content-Type": "application/json"}
        requests = [
            {"method": "GET", "url": base, "body": None},
            {"method": "GET", "url": f"{base}?limit=5&status=pending", "body": None},
            {"method": "POST", "url": base, "body": body, "headers": json_headers},
            {"method": "POST", "url": f"{base}?source=interop", "body": body, "headers": json_headers},
        ]
        answer = node("erc8128_slicekit_fetch.mjs", {"key": key, "chain_id": 1, "requests": requests})
    get_plain, get_query, post_plain, post_query = answer["responses"]
    assert get_plain["signature_input"].startswith('eth=("@authority" "@method" "@path");')
    assert '"@query"' in get_query["signature_input"] and "content-digest" not in get_query["signature_input"]
    assert '"@query"' not in post_plain["signature_input"] and "content-digest" in post_plain["signature_input"]
    assert '"@query" "content-digest"' in post_query["signature_input"]
    assert [r["status"] for r in answer["responses"]] == [200, 200, 202, 202], answer
    created = [json.loads(r["body"])["id"] for r in (post_plain, post_query)]
    assert all(api.records.get(operation_id).grantee == address for operation_id in created)
