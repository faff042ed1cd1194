"""Starlette glue for ERC-8128 signed requests: rebuild what the client signed, verify it, audit the decision.

Endpoints call ``await authenticate(request)`` first. The verifier itself (``shared.auth``) knows nothing about
Starlette; this module only decides which ``@authority`` and ``@path`` the client saw, which depends on the
ingress: forwarded headers are believed only from ``settings.trusted_proxies``.
"""

from __future__ import annotations

import ipaddress
import re
from functools import lru_cache
from typing import Any

import structlog
from redis.exceptions import RedisError
from starlette.requests import Request

from api_service.errors import PayloadTooLarge
from shared.auth.base import AuthorityError, normalize_authority
from shared.auth.headers import claimed_address
from shared.auth.replay import store_unavailable
from shared.auth.verifier import SignedRequest, VerifiedSigner, Verifier
from shared.errors import AuthError, StrongroomError
from shared.events import apublish, new_event
from shared.layout import is_operation_id
from shared.settings import Settings

log = structlog.get_logger(__name__)

_OPERATION_IN_PATH = re.compile(r"/operations/([^/?]+)")
_DIGITS = re.compile(r"[0-9]+")  # ASCII only: str.isdigit() also passes '²', which int() rejects
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


async def authenticate(request: Request) -> VerifiedSigner:
    """Verify the request's signature and return the signer; raise the typed error otherwise.

    Every decision is published as an ``auth`` audit event. The proven signer is also left on
    ``request.state.signer`` for later middleware or logging.
    """
    settings: Settings = _state(request, "settings")
    verifier: Verifier = _state(request, "verifier")
    headers = _joined_headers(request)
    try:
        signed = await signed_request(request, settings, headers)
        signer = await verifier.verify(signed)
    except StrongroomError as exc:
        await _audit(request, result="denied", reason=exc.code, actor=claimed_address(headers), strict=False)
        raise
    await _audit(request, result="allowed", reason=None, actor=signer.address, strict=True)
    request.state.signer = signer
    return signer


async def signed_request(request: Request, settings: Settings, headers: dict[str, str]) -> SignedRequest:
    """The request as its client saw it: public authority and path prefix, raw target, exact body bytes."""
    declared = headers.get("content-length", "")
    if _DIGITS.fullmatch(declared) and (len(declared) > 18 or int(declared) > settings.max_input_bytes):
        raise PayloadTooLarge("the request body is larger than the input limit")
    trusted = _from_trusted_proxy(request, settings.trusted_proxies)
    scheme = request.url.scheme
    host = headers.get("host", "")
    prefix = settings.public_path_prefix
    if trusted:
        scheme = _last(headers.get("x-forwarded-proto")) or scheme
        host = _last(headers.get("x-forwarded-host")) or host
        prefix = _last(headers.get("x-forwarded-prefix")).rstrip("/") or prefix
    raw_path = request.scope.get("raw_path") or request.scope["path"].encode("utf-8")
    try:
        authority = normalize_authority(host, scheme)
    except AuthorityError:
        raise AuthError("the Host is not a valid authority", code="authority_not_allowed") from None
    return SignedRequest(
        method=request.method,
        authority=authority,
        path=prefix + raw_path.decode("latin-1"),
        query="?" + request.scope.get("query_string", b"").decode("latin-1"),
        headers=headers,
        body=await request.body(),
    )


def _state(request: Request, name: str) -> Any:
    """``app.state.<name>``, or the same attribute of ``app.state.services`` (the API's service container)."""
    state = request.app.state
    value = getattr(state, name, None)
    return value if value is not None else getattr(state.services, name)


def _joined_headers(request: Request) -> dict[str, str]:
    """RFC 9110 section 5.3: repeated field lines are one value joined with ", " (RFC 9421 section 2.1 too)."""
    joined: dict[str, str] = {}
    for raw_name, raw_value in request.scope.get("headers", []):
        name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
        joined[name] = f"{joined[name]}, {value}" if name in joined else value
    return joined


def _last(value: str | None) -> str:
    """The entry our trusted proxy wrote: a proxy that appends leaves whatever the client sent in front of it."""
    return (value or "").rsplit(",", 1)[-1].strip()


def _from_trusted_proxy(request: Request, proxies: tuple[str, ...]) -> bool:
    if not proxies or request.client is None:
        return False
    try:
        peer = ipaddress.ip_address(request.client.host)
    except ValueError:
        return False
    return any(peer in network for network in _networks(proxies))


@lru_cache(maxsize=8)
def _networks(proxies: tuple[str, ...]) -> tuple[_Network, ...]:
    return tuple(ipaddress.ip_network(cidr, strict=False) for cidr in proxies)


async def _audit(request: Request, *, result: str, reason: str | None, actor: str | None, strict: bool) -> None:
    """Publish the decision. An access that cannot be recorded is refused (``strict``); a refusal is only logged."""
    match = _OPERATION_IN_PATH.search(request.url.path)
    operation_id = match.group(1) if match and is_operation_id(match.group(1)) else None
    event = new_event(
        action="auth",
        result=result,
        reason=reason,
        actor=actor,
        operation_id=operation_id,
        request_id=getattr(request.state, "request_id", None),
    )
    try:
        await apublish(_state(request, "redis"), event)
    except (RedisError, OSError):
        log.warning("auth.audit_unpublished", result=result, reason=reason)
        if strict:
            raise store_unavailable() from None
