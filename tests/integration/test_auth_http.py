"""Signed requests over HTTP: a small Starlette app around ``api_service.auth`` on a real Valkey.

Every refusal is checked as the client sees it: status, ``application/problem+json`` and the stable ``code``.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis as sync_redis
import redis.asyncio as aioredis
from eth_account import Account
from eth_account.messages import encode_defunct
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from api_service.auth import authenticate
from api_service.errors import exception_handlers
from api_service.middleware import BodyLimitMiddleware
from shared.auth.base import REQUIRED_COMPONENTS, RequestParts, content_digest, serialize_params, signature_base
from shared.auth.signer import sign_request
from shared.auth.verifier import Verifier
from shared.events import decode
from shared.layout import (
    REDIS_AUDIT_REFUSALS,
    REDIS_AUDIT_STREAM,
    new_operation_id,
    redis_auth_failure_key,
    redis_wallet_failure_key,
)
from shared.settings import Settings
from strongroom.dev.servers import free_port

pytestmark = pytest.mark.integration

ORIGIN = "http://testserver"
OPERATIONS = f"{ORIGIN}/api/v1/operations"


async def whoami(request: Request) -> JSONResponse:
    signer = await authenticate(request)
    return JSONResponse({"address": signer.address, "chain_id": signer.chain_id})


def build_app(settings: Settings, clock: Callable[[], float]) -> Starlette:
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app: Starlette) -> Any:
        app.state.settings = settings
        app.state.redis = aioredis.Redis.from_url(settings.redis_url, socket_timeout=2, socket_connect_timeout=2)
        app.state.verifier = Verifier(settings, app.state.redis, clock=clock)
        yield
        await app.state.redis.aclose()

    routes = [
        Route("/api/v1/operations", whoami, methods=["GET", "POST"]),
        Route("/api/v1/operations/{operation_id}", whoami, methods=["GET", "DELETE"]),
        Route("/api/v1/operations/{operation_id}/artifacts/{name:path}", whoami, methods=["GET"]),
    ]
    body_limit = Middleware(BodyLimitMiddleware, limit=settings.max_input_bytes)  # as in api_service.app
    return Starlette(routes=routes, lifespan=lifespan, exception_handlers=exception_handlers(), middleware=[body_limit])


class Api:
    """A running test app, a fresh key, and the clock the verifier reads."""

    def __init__(self, redis_url: str, client: tuple[str, int] = ("testclient", 50000), **overrides: Any) -> None:
        overrides.setdefault("rate_limit_per_minute", 0)
        overrides.setdefault("auth_failures_per_minute", 0)  # the refusal tests share one client address
        self.settings = Settings.from_env({"REDIS_URL": redis_url}, **overrides)
        self.now = int(time.time())
        self.key = "0x" + secrets.token_hex(32)
        self.address = Account.from_key(self.key).address.lower()
        self.client = TestClient(build_app(self.settings, lambda: self.now), client=client)

    def headers(self, method: str, url: str, body: bytes = b"", **kwargs: Any) -> dict[str, str]:
        kwargs.setdefault("created", self.now)
        return sign_request(self.key, method, url, body, **kwargs)

    def send(self, method: str, url: str, body: bytes = b"", headers: dict[str, str] | None = None) -> Any:
        return self.client.request(method, url, content=body, headers=headers)

    def custom(self, covered: tuple[str, ...] = REQUIRED_COMPONENTS, body: bytes = b"{}", **params: Any) -> dict:
        """Correct headers for ``POST /api/v1/operations`` with any parameters (``None`` drops one)."""
        base_params = {
            "created": self.now,
            "expires": self.now + 60,
            "nonce": base64.urlsafe_b64encode(secrets.token_bytes(16)).decode().rstrip("="),
            "keyid": f"erc8128:1:{self.address}",
        } | params
        base_params = {k: v for k, v in base_params.items() if v is not None}
        digest = content_digest(body)
        parts = RequestParts("POST", "testserver", "/api/v1/operations", "?", {"content-digest": digest})
        base = signature_base(covered, base_params, parts)
        signature = Account.from_key(self.key).sign_message(encode_defunct(text=base)).signature
        return {
            "Content-Digest": digest,
            "Signature-Input": "eth=" + serialize_params(covered, base_params),
            "Signature": f"eth=:{base64.b64encode(bytes(signature)).decode()}:",
        }


@pytest.fixture
def api(redis_url: str) -> Iterator[Api]:
    instance = Api(redis_url)
    with instance.client:
        yield instance


def assert_problem(response: Any, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert (problem["status"], problem["code"]) == (status, code)
    assert {"type", "title", "detail"} <= set(problem)


def test_signed_post_is_accepted(api: Api) -> None:
    body = b'{"agent":"privacy-audit"}'
    response = api.send("POST", OPERATIONS, body, api.headers("POST", OPERATIONS, body))
    assert response.status_code == 200, response.text
    assert response.json() == {"address": api.address, "chain_id": 1}


def test_raw_percent_encoded_target_is_what_is_signed(api: Api) -> None:
    url = f"{OPERATIONS}/{new_operation_id('demo')}/artifacts/a%20b%2Fc.txt?x=%C3%A9&y=1"
    assert api.send("GET", url, headers=api.headers("GET", url)).status_code == 200
    forged = api.headers("GET", url.replace("a%20b%2Fc.txt", "a b/c.txt"))
    assert_problem(api.send("GET", url, headers=forged), 401, "signature_invalid")


def test_replay_is_refused(api: Api) -> None:
    headers = api.headers("GET", OPERATIONS)
    assert api.send("GET", OPERATIONS, headers=headers).status_code == 200
    assert_problem(api.send("GET", OPERATIONS, headers=headers), 401, "nonce_replayed")


def _negative_cases(api: Api) -> list[tuple[str, Callable[[], tuple[str, bytes, dict[str, str]]], int, str]]:
    body = b'{"a":1}'

    def post(headers: dict[str, str], sent_body: bytes = body) -> tuple[str, bytes, dict[str, str]]:
        return OPERATIONS, sent_body, headers

    def signed() -> dict[str, str]:
        return api.headers("POST", OPERATIONS, body)

    def without(*names: str) -> dict[str, str]:
        return {k: v for k, v in signed().items() if k not in names}

    def replace(**changes: str) -> dict[str, str]:
        return signed() | {k.replace("_", "-"): v for k, v in changes.items()}

    other = Account.from_key("0x" + "07" * 32).address.lower()
    return [
        ("no headers", lambda: post({}), 401, "signature_missing"),
        ("only Signature-Input", lambda: post(without("Signature")), 401, "signature_missing"),
        ("only Signature", lambda: post(without("Signature-Input")), 401, "signature_missing"),
        (
            "unknown label",
            lambda: post(replace(Signature=signed()["Signature"].replace("eth=", "sig2=", 1))),
            401,
            "signature_malformed",
        ),
        (
            "body without content-digest",
            lambda: (OPERATIONS, b"{}", api.custom(covered=("@method", "@authority", "@path", "@query"))),
            401,
            "signature_malformed",
        ),
        ("missing nonce", lambda: (OPERATIONS, b"{}", api.custom(nonce=None)), 401, "signature_malformed"),
        (
            "expires in the past",
            lambda: (OPERATIONS, b"{}", api.custom(created=api.now - 100, expires=api.now - 1)),
            401,
            "signature_expired",
        ),
        (
            "created in the future beyond skew",
            lambda: (OPERATIONS, b"{}", api.custom(created=api.now + 61, expires=api.now + 100)),
            401,
            "signature_expired",
        ),
        ("window too long", lambda: (OPERATIONS, b"{}", api.custom(expires=api.now + 301)), 401, "signature_expired"),
        (
            "wrong digest",
            lambda: post(replace(Content_Digest=content_digest(b"something else"))),
            401,
            "digest_mismatch",
        ),
        ("body changed", lambda: post(signed(), b'{"a":2}'), 401, "digest_mismatch"),
        (
            "another address's signature",
            lambda: (OPERATIONS, b"{}", api.custom(keyid=f"erc8128:1:{other}")),
            401,
            "signature_invalid",
        ),
        (
            "keyid chain not allowed",
            lambda: (OPERATIONS, b"{}", api.custom(keyid=f"erc8128:137:{api.address}")),
            401,
            "chain_not_allowed",
        ),
        ("malformed base64", lambda: post(replace(Signature="eth=:%%%%:")), 401, "signature_malformed"),
        ("oversized header", lambda: post(replace(Signature="eth=:" + "A" * 8000 + ":")), 401, "signature_malformed"),
        (
            "non-ASCII in headers",
            lambda: post(replace(Signature_Input=signed()["Signature-Input"] + ';x="\xe9"')),
            401,
            "signature_malformed",
        ),
    ]


@pytest.mark.parametrize("index", range(16))
def test_refusals_over_http(api: Api, index: int) -> None:
    name, case, status, code = _negative_cases(api)[index]
    url, body, headers = case()
    encoded = {k: v.encode("latin-1") for k, v in headers.items()}  # lets the non-ASCII case reach the server
    response = api.client.request("POST", url, content=body, headers=encoded)  # type: ignore[arg-type]
    assert_problem(response, status, code)
    assert headers.get("Signature", "##").split("=:", 1)[-1].rstrip(":") not in response.text, name


def test_redis_down_is_503(redis_url: str) -> None:
    api = Api(f"redis://127.0.0.1:{free_port()}/0")
    with api.client:
        response = api.send("GET", OPERATIONS, headers=api.headers("GET", OPERATIONS))
    assert_problem(response, 503, "nonce_store_unavailable")


def test_rate_limit_answers_429_with_retry_after(redis_url: str) -> None:
    api = Api(redis_url, rate_limit_per_minute=2)
    with api.client:
        for _ in range(2):
            assert api.send("GET", OPERATIONS, headers=api.headers("GET", OPERATIONS)).status_code == 200
        response = api.send("GET", OPERATIONS, headers=api.headers("GET", OPERATIONS))
    assert_problem(response, 429, "rate_limited")
    assert 1 <= int(response.headers["retry-after"]) <= 60


def _events_after(client: sync_redis.Redis, last_id: bytes, stream: str = REDIS_AUDIT_STREAM) -> list[Any]:
    entries: Any = client.xrange(stream, min=b"(" + last_id)
    return [decode(fields) for _, fields in entries]


def _stream_tail(client: sync_redis.Redis, stream: str = REDIS_AUDIT_STREAM) -> bytes:
    newest: Any = client.xrevrange(stream, count=1)
    return bytes(newest[0][0]) if newest else b"0-0"


def test_decisions_are_audited(api: Api, redis_url: str) -> None:
    """Finding 4: a refusal proves nobody, so it names no actor and no operation (it goes to the global log).
    Second review, finding 7: refusals go to their own stream; the accepted request's event to the main one."""
    operation_id = new_operation_id("demo")
    url = f"{OPERATIONS}/{operation_id}"
    headers = api.headers("GET", url)
    client = sync_redis.Redis.from_url(redis_url)
    start, refusals_start = _stream_tail(client), _stream_tail(client, REDIS_AUDIT_REFUSALS)
    assert api.send("GET", url, headers=headers).status_code == 200
    assert api.send("GET", url, headers=headers).status_code == 401  # a replay of a real signature
    assert api.send("GET", url).status_code == 401  # unsigned
    accepted = _events_after(client, start)
    refused = _events_after(client, refusals_start, REDIS_AUDIT_REFUSALS)
    assert [(e.action, e.result, e.reason, e.actor, e.operation_id) for e in accepted] == [
        ("auth", "allowed", None, api.address, operation_id)
    ]
    assert [(e.action, e.result, e.reason, e.actor, e.operation_id) for e in refused] == [
        ("auth", "denied", "nonce_replayed", None, None),
        ("auth", "denied", "signature_missing", None, None),
    ]
    payload = json.dumps([e.model_dump(mode="json") for e in accepted + refused])
    assert headers["Signature"].split("=:", 1)[1].rstrip(":") not in payload


def test_a_refusal_flood_from_many_clients_never_trims_accepted_events(redis_url: str) -> None:
    """Finding 7: every client stays inside its own failure budget, yet together they send far more refusals than
    the refusal stream holds; the refusal stream is trimmed to its cap and the accepted stream is not touched."""
    proxy = "10.1.2.3"
    api = Api(
        redis_url,
        client=(proxy, 4000),
        trusted_proxies=(f"{proxy}/32",),
        auth_failures_per_minute=5,
        audit_refusals_maxlen=100,
    )
    redis = sync_redis.Redis.from_url(redis_url)
    url = f"{OPERATIONS}/{new_operation_id('demo')}"
    flood = 400
    with api.client:
        assert api.send("GET", url, headers=api.headers("GET", url)).status_code == 200
        start = _stream_tail(redis)
        length = redis.xlen(REDIS_AUDIT_STREAM)
        prefix = f"2001:db8:{secrets.token_hex(2)}"
        for n in range(flood):  # one request from each of 400 /64s
            forwarded = {"X-Forwarded-For": f"{prefix}:{n:x}::1"}
            assert_problem(api.send("GET", url, headers=forwarded), 401, "signature_missing")
    assert redis.xlen(REDIS_AUDIT_REFUSALS) < flood
    assert redis.xlen(REDIS_AUDIT_STREAM) == length and _events_after(redis, start) == []


def test_refusals_per_client_are_limited_and_then_not_audited(redis_url: str) -> None:
    """Past STRONGROOM_AUTH_FAILURES_PER_MINUTE a client gets 429 + Retry-After and adds nothing to the trail;
    good signatures from that client still pass, and another client is unaffected."""
    peer = f"198.51.100.{secrets.randbelow(250) + 1}"
    api = Api(redis_url, client=(peer, 4000), auth_failures_per_minute=3)
    other = Api(redis_url, client=(f"2001:db8:{secrets.token_hex(2)}::1", 4000), auth_failures_per_minute=3)
    url = f"{OPERATIONS}/{new_operation_id('demo')}"
    redis = sync_redis.Redis.from_url(redis_url)
    start = _stream_tail(redis, REDIS_AUDIT_REFUSALS)
    with api.client, other.client:
        for _ in range(3):
            assert_problem(api.send("GET", url), 401, "signature_missing")
        limited = api.send("GET", url)
        assert_problem(limited, 429, "rate_limited")
        assert 1 <= int(limited.headers["retry-after"]) <= 60
        assert_problem(api.send("GET", url, headers=api.headers("GET", OPERATIONS)), 429, "rate_limited")
        assert api.send("GET", url, headers=api.headers("GET", url)).status_code == 200
        assert_problem(other.send("GET", url), 401, "signature_missing")
    denied = [e for e in _events_after(redis, start, REDIS_AUDIT_REFUSALS) if e.result == "denied"]
    assert [e.reason for e in denied] == ["signature_missing"] * 4  # 3 from the limited client, 1 from the other
    assert all(e.actor is None and e.operation_id is None for e in denied)


def test_a_body_over_the_limit_is_charged_to_the_clients_budget(redis_url: str) -> None:
    """Finding 9: a streamed body that outgrows the input limit (no Content-Length, so only reading it finds out)
    is a refusal like any other: audited, and counted until the client gets 429 and is no longer audited."""
    peer = f"198.51.100.{secrets.randbelow(250) + 1}"
    api = Api(redis_url, client=(peer, 4000), auth_failures_per_minute=2, max_input_bytes=64)
    redis = sync_redis.Redis.from_url(redis_url)
    start = _stream_tail(redis, REDIS_AUDIT_REFUSALS)
    big = b"x" * 200

    def chunked() -> Iterator[bytes]:
        yield big[:100]
        yield big[100:]

    with api.client:
        for _ in range(2):
            headers = api.headers("POST", OPERATIONS, big)
            response = api.client.request("POST", OPERATIONS, content=chunked(), headers=headers)
            assert "content-length" not in {k.lower() for k in response.request.headers}
            assert_problem(response, 422, "input_too_large")
        headers = api.headers("POST", OPERATIONS, big)
        assert_problem(api.client.request("POST", OPERATIONS, content=chunked(), headers=headers), 429, "rate_limited")
        assert_problem(api.send("GET", OPERATIONS), 429, "rate_limited")  # the same budget as other refusals
        assert api.send("GET", OPERATIONS, headers=api.headers("GET", OPERATIONS)).status_code == 200
    refused = _events_after(redis, start, REDIS_AUDIT_REFUSALS)
    assert [(e.reason, e.actor) for e in refused if e.result == "denied"] == [("input_too_large", None)] * 2


def test_refusals_naming_an_address_are_also_charged_to_that_client_and_address(redis_url: str) -> None:
    """Finding 8: what gates the ERC-1271 path is the (client, keyid address) count, so the API charges a refusal
    to it whenever the request names an address; a refusal naming none is charged to the client alone."""
    peer = f"198.51.100.{secrets.randbelow(250) + 1}"
    api = Api(redis_url, client=(peer, 4000), auth_failures_per_minute=10)
    forger = Account.from_key("0x" + secrets.token_hex(32))
    redis = sync_redis.Redis.from_url(redis_url)
    with api.client:
        window = int(time.time() // 60)
        for _ in range(2):  # signed by another key, naming api.address
            headers = sign_request(_Impostor(forger, api.address), "GET", OPERATIONS, created=api.now)
            assert_problem(api.send("GET", OPERATIONS, headers=headers), 401, "signature_invalid")
        assert_problem(api.send("GET", OPERATIONS), 401, "signature_missing")
    if int(time.time() // 60) != window:
        pytest.skip("the minute changed while the test ran")  # counts are per fixed window
    assert int(redis.get(redis_auth_failure_key(peer, window)) or 0) == 3
    assert int(redis.get(redis_wallet_failure_key(peer, api.address, window)) or 0) == 2


class _Impostor:
    """Signs with ``account`` while claiming ``address`` in the keyid (what a forger, or a wallet SDK, sends)."""

    def __init__(self, account: Any, address: str) -> None:
        self._account, self.address = account, address

    def sign_message(self, message: Any) -> Any:
        return self._account.sign_message(message)


def test_refusals_fail_closed_when_redis_is_down() -> None:
    api = Api(f"redis://127.0.0.1:{free_port()}/0", auth_failures_per_minute=3)
    with api.client:
        assert_problem(api.send("GET", OPERATIONS), 503, "nonce_store_unavailable")


def test_forwarded_headers_from_untrusted_peers_are_ignored(api: Api) -> None:
    spoofed = {"X-Forwarded-Host": "public.example", "X-Forwarded-Proto": "https"}
    url_public = "https://public.example/api/v1/operations"
    response = api.send("GET", OPERATIONS, headers=api.headers("GET", url_public) | spoofed)
    assert_problem(response, 401, "signature_invalid")
    assert api.send("GET", OPERATIONS, headers=api.headers("GET", OPERATIONS) | spoofed).status_code == 200


def test_trusted_proxy_forwarded_host_proto_and_prefix(redis_url: str) -> None:
    api = Api(redis_url, client=("10.1.2.3", 4000), trusted_proxies=("10.0.0.0/8",))
    forwarded = {"X-Forwarded-Host": "Public.Example:443", "X-Forwarded-Proto": "https", "X-Forwarded-Prefix": "/sr"}
    public = "https://public.example/sr/api/v1/operations?limit=5"
    with api.client:
        ok = api.send("GET", f"{OPERATIONS}?limit=5", headers=api.headers("GET", public) | forwarded)
        assert ok.status_code == 200, ok.text
        internal = api.send(
            "GET", f"{OPERATIONS}?limit=5", headers=api.headers("GET", f"{OPERATIONS}?limit=5") | forwarded
        )
        assert_problem(internal, 401, "signature_invalid")


def test_public_prefix_and_authorities_from_settings(redis_url: str) -> None:
    api = Api(redis_url, public_path_prefix="/strongroom", public_authorities=("testserver",))
    with api.client:
        prefixed = f"{ORIGIN}/strongroom/api/v1/operations"
        assert api.send("GET", OPERATIONS, headers=api.headers("GET", prefixed)).status_code == 200
        other_host = api.client.request(
            "GET",
            OPERATIONS,
            headers=api.headers("GET", "http://elsewhere/strongroom/api/v1/operations") | {"Host": "elsewhere"},
        )
        assert_problem(other_host, 401, "authority_not_allowed")


def test_trusted_proxy_that_appends_is_read_from_the_last_entry(redis_url: str) -> None:
    """A proxy that appends to X-Forwarded-Host leaves the client's own value first: only the last is ours."""
    api = Api(redis_url, client=("10.1.2.3", 4000), trusted_proxies=("10.0.0.0/8",))
    appended = {"X-Forwarded-Host": "other-deployment.example, public.example", "X-Forwarded-Proto": "http, https"}
    with api.client:
        ok = api.send(
            "GET", OPERATIONS, headers=api.headers("GET", "https://public.example/api/v1/operations") | appended
        )
        assert ok.status_code == 200, ok.text
        captured = api.headers("GET", "https://other-deployment.example/api/v1/operations")
        assert_problem(api.send("GET", OPERATIONS, headers=captured | appended), 401, "signature_invalid")


def test_strongroom_api_in_production_stops_at_start_up_naming_public_authorities() -> None:
    """Finding 6: the start-up check runs in the real entry point, before uvicorn binds, as one line (exit 2)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "REDIS_URL": "redis://127.0.0.1:1/0"}
    result = subprocess.run(
        [sys.executable, "-m", "strongroom", "api"],
        env={**env, "STRONGROOM_ENV": "production", "STRONGROOM_GRANTS_SOURCE": "open"},
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert "STRONGROOM_PUBLIC_AUTHORITIES" in result.stderr and "Traceback" not in result.stderr
