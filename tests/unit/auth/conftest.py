"""Helpers for the signed-request unit tests: settings, a fixed clock, and an in-process nonce store.

``MemoryNonces`` implements the single Redis call the verifier makes when rate limiting is off
(``SET key value NX EX ttl``), with Redis' semantics; integration tests run the same verifier on real Valkey.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from eth_account import Account

from shared.auth.signer import sign_request
from shared.auth.verifier import SignedRequest, VerifiedSigner, Verifier
from shared.settings import Settings

NOW = 1_767_225_600
KEY = "0x" + "42" * 32
OTHER_KEY = "0x" + "43" * 32
ADDRESS = Account.from_key(KEY).address.lower()


class MemoryNonces:
    def __init__(self) -> None:
        self.keys: dict[str, tuple[bytes, int | None]] = {}

    async def set(self, key: str, value: bytes, *, nx: bool = False, ex: int | None = None) -> bool | None:
        if nx and key in self.keys:
            return None
        self.keys[key] = (value, ex)
        return True


def make_settings(**overrides: Any) -> Settings:
    overrides.setdefault("rate_limit_per_minute", 0)
    return Settings.from_env({"REDIS_URL": "redis://127.0.0.1:1/0"}, **overrides)


def request_for(method: str, url: str, body: bytes = b"", *, headers: dict[str, str] | None = None) -> SignedRequest:
    """The request a server would rebuild for ``url`` (no proxy in between)."""
    from urllib.parse import urlsplit

    from shared.auth.base import normalize_authority

    target = urlsplit(url)
    return SignedRequest(
        method=method,
        authority=normalize_authority(target.netloc, target.scheme),
        path=target.path or "/",
        query="?" + target.query,
        headers=headers or {},
        body=body,
    )


def signed(
    method: str = "POST",
    url: str = "https://strongroom.example/api/v1/operations",
    body: bytes = b'{"agent":"x"}',
    *,
    key: str = KEY,
    **kwargs: Any,
) -> SignedRequest:
    kwargs.setdefault("created", NOW)
    headers = sign_request(key, method, url, body, **kwargs)
    return request_for(method, url, body, headers=headers)


class VerifyFixture:
    def __init__(self) -> None:
        self.settings = make_settings()
        self.nonces = MemoryNonces()
        self.now = float(NOW)

    def verifier(self, **overrides: Any) -> Verifier:
        settings = make_settings(**overrides) if overrides else self.settings
        clock: Callable[[], float] = lambda: self.now  # noqa: E731
        return Verifier(settings, self.nonces, clock=clock)  # type: ignore[arg-type]

    def verify(self, request: SignedRequest, **overrides: Any) -> VerifiedSigner:
        return asyncio.run(self.verifier(**overrides).verify(request))


@pytest.fixture
def verify() -> VerifyFixture:
    return VerifyFixture()


def custom_signed(
    *,
    covered: tuple[str, ...] = ("@method", "@authority", "@path", "@query", "content-digest"),
    params: dict[str, Any] | None = None,
    key: str = KEY,
    label: str = "eth",
    signature_label: str | None = None,
    body: bytes = b"{}",
    digest: str | None = None,
    extra_headers: dict[str, str] | None = None,
    method: str = "POST",
    query: str = "?",
    signed_query: str | None = None,
) -> SignedRequest:
    """A correctly signed request with any covered list and parameters, to reach checks the SDK never fails.

    ``signed_query`` is the ``@query`` value the signer put in its base when it differs from the request's (a
    signer that does not follow RFC 9421).
    """
    import base64

    from eth_account.messages import encode_defunct

    from shared.auth.base import RequestParts, content_digest, serialize_params, signature_base

    if params is None:
        params = {
            "created": NOW,
            "expires": NOW + 60,
            "nonce": "AAECAwQFBgcICQoLDA0ODw",
            "keyid": f"erc8128:1:{Account.from_key(key).address.lower()}",
        }
    headers = {"content-digest": digest or content_digest(body), **(extra_headers or {})}
    parts = RequestParts(method, "strongroom.example", "/api/v1/operations", query, headers)
    base = signature_base(covered, params, parts)
    if signed_query is not None:
        base = base.replace(f'"@query": {query}', f'"@query": {signed_query}', 1)
    signature = bytes(Account.from_key(key).sign_message(encode_defunct(text=base)).signature)
    headers["signature-input"] = f"{label}={serialize_params(covered, params)}"
    headers["signature"] = f"{signature_label or label}=:{base64.b64encode(signature).decode()}:"
    return SignedRequest(method, "strongroom.example", "/api/v1/operations", query, headers, body)
