"""Starlette glue for ERC-8128 signed requests: rebuild what the client signed, verify it, audit the decision.

Endpoints do not call ``authenticate`` themselves: they are declared ``@signed(...)`` (``api_service.access``),
which calls it first and then makes the access decision. The verifier itself (``shared.auth``) knows nothing about
Starlette; this module only decides which ``@authority`` and ``@path`` the client saw, which depends on the
ingress: forwarded headers are believed only from ``settings.trusted_proxies``.
"""

from __future__ import annotations

import ipaddress
import re
import time
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import structlog
from redis.exceptions import RedisError
from starlette.requests import Request

from api_service.errors import PayloadTooLarge
from shared.auth.base import AuthorityError, normalize_authority
from shared.auth.headers import claimed_address
from shared.auth.replay import FailureLimited, SignerRateLimited, count_failure
from shared.auth.verifier import SignedRequest, VerifiedSigner, Verifier
from shared.errors import AuthError, RateLimited, StrongroomError
from shared.events import apublish_refusal, new_event
from shared.layout import is_operation_id
from shared.models import AuditEvent
from shared.settings import Settings

log = structlog.get_logger(__name__)

_OPERATION_IN_PATH = re.compile(r"/operations/([^/]+)")
_DIGITS = re.compile(r"[0-9]+")  # ASCII only: str.isdigit() also passes '²', which int() rejects
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


async def authenticate(
    request: Request,
    *,
    operation_id: str | None = None,
    prejudge: Callable[[VerifiedSigner], tuple[bytes, AuditEvent] | None] | None = None,
) -> VerifiedSigner:
    """Verify the request's signature and return the signer; raise the typed error otherwise.

    Every decision is published as an ``auth`` audit event, except refusals past the client's failure budget
    (429, ``STRONGROOM_AUTH_FAILURES_PER_MINUTE``): that budget is what keeps unauthenticated traffic from
    flooding the audit trail. Every refusal the client caused is charged to it, a body over the input limit
    included; only a dependency that is down (503) is not. Refusals travel on their own capped stream, so even a
    flood from many clients never trims accepted accesses before they are persisted. A refusal names no actor
    and no operation (it goes to the global log), since nobody was proven; only the per-address rate limit,
    which runs after the signature verified, names its signer. An accepted request's event is written by the
    verifier in the same atomic Redis step that consumes its nonce (one round trip), so no access is granted
    unrecorded: if Redis cannot take it, the answer is 503. The proven signer is also left on
    ``request.state.signer`` for later middleware or logging. ``operation_id`` and ``prejudge``: see
    ``Verifier.verify`` (``api_service.access`` uses them to write its own event in that same step).
    """
    settings: Settings = _state(request, "settings")
    verifier: Verifier = _state(request, "verifier")
    headers = _joined_headers(request)
    client = client_id(request, settings.trusted_proxies)
    request_id = getattr(request.state, "request_id", None)

    def allowed(signer: VerifiedSigner) -> AuditEvent:
        # Written by the verifier in the same Redis step that consumes the nonce: no access goes unrecorded.
        return new_event(
            action="auth",
            result="allowed",
            reason=None,
            actor=signer.address,
            operation_id=_operation_in(request),
            request_id=request_id,
        )

    try:
        signed = await signed_request(request, settings, headers, client=client)
        signer = await verifier.verify(signed, audit=allowed, operation_id=operation_id, prejudge=prejudge)
    except FailureLimited:
        raise
    except (AuthError, RateLimited, PayloadTooLarge) as exc:  # the client's doing: charged to its budget
        limit = settings.auth_failures_per_minute
        claimed = claimed_address(headers)  # also charged to (client, address): the budget of the ERC-1271 path
        await count_failure(_state(request, "redis"), client, limit=limit, now=time.time(), address=claimed)
        actor = claimed if isinstance(exc, SignerRateLimited) else None  # the only refusal with a proven signer
        await _audit_refusal(request, reason=exc.code, actor=actor)
        raise
    except StrongroomError as exc:  # a dependency is down: not the client's fault, so not charged
        await _audit_refusal(request, reason=exc.code, actor=None)
        raise
    request.state.signer = signer
    return signer


def client_id(request: Request, proxies: tuple[str, ...]) -> str:
    """Whom the failure budget charges: the peer address or, behind trusted proxies, the nearest untrusted hop
    of ``X-Forwarded-For`` (read from the right: entries further left are whatever the client claimed).

    IPv6 clients are grouped by /64, the smallest block a subscriber usually gets.
    """
    raw = request.client.host if request.client is not None else ""
    if not proxies:
        return _peer_id(raw)
    peer = _ip(raw)
    if peer is None:
        return raw or "unknown"
    if _is_trusted(peer, proxies):
        forwarded = ",".join(v for k, v in request.headers.items() if k == "x-forwarded-for")
        for hop in reversed([h.strip() for h in forwarded.split(",") if h.strip()]):
            address = _ip(hop)
            if address is None:
                break
            peer = address
            if not _is_trusted(address, proxies):
                break
    return _grouped(peer)


@lru_cache(maxsize=4096)
def _peer_id(raw: str) -> str:
    """``client_id`` without trusted proxies: a function of the peer address alone, so parsed once per peer."""
    peer = _ip(raw)
    return (raw or "unknown") if peer is None else _grouped(peer)


def _grouped(peer: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    if isinstance(peer, ipaddress.IPv6Address):
        if peer.ipv4_mapped is not None:
            return str(peer.ipv4_mapped)
        return str(ipaddress.IPv6Network((peer, 64), strict=False))
    return str(peer)


def _ip(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        return None


def _is_trusted(address: ipaddress.IPv4Address | ipaddress.IPv6Address, proxies: tuple[str, ...]) -> bool:
    return any(address in network for network in _networks(proxies))


async def signed_request(
    request: Request, settings: Settings, headers: dict[str, str], *, client: str | None = None
) -> SignedRequest:
    """The request as its client saw it: public authority and path prefix, raw target, exact body bytes.

    ``client`` (see ``client_id``) is passed through for the verifier's failure-budget check.
    """
    declared = headers.get("content-length", "")
    if _DIGITS.fullmatch(declared) and (len(declared) > 18 or int(declared) > settings.max_input_bytes):
        raise PayloadTooLarge("the request body is larger than the input limit")
    trusted = _from_trusted_proxy(request, settings.trusted_proxies)
    scheme = request.scope.get("scheme", "http")  # what request.url.scheme says, without building the URL
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
        client=client,
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
    peer = _ip(request.client.host)
    return peer is not None and _is_trusted(peer, proxies)


@lru_cache(maxsize=8)
def _networks(proxies: tuple[str, ...]) -> tuple[_Network, ...]:
    return tuple(ipaddress.ip_network(cidr, strict=False) for cidr in proxies)


def _operation_in(request: Request) -> str | None:
    """The operation id in the path, if any (the decoded path: an id has no character that would be escaped)."""
    match = _OPERATION_IN_PATH.search(request.scope["path"])
    return match.group(1) if match and is_operation_id(match.group(1)) else None


async def _audit_refusal(request: Request, *, reason: str | None, actor: str | None) -> None:
    """Publish a refusal; one that cannot be recorded is only logged (the request is refused either way).

    Refusals go to their own capped stream (``shared.events.apublish_refusal``): anyone can cause them, so their
    volume must never trim the stream of accepted accesses, which the verifier writes atomically with the nonce.
    """
    event = new_event(
        action="auth",
        result="denied",
        reason=reason,
        actor=actor,
        operation_id=None,
        request_id=getattr(request.state, "request_id", None),
    )
    try:
        settings: Settings = _state(request, "settings")
        await apublish_refusal(_state(request, "redis"), event, maxlen=settings.audit_refusals_maxlen)
    except (RedisError, OSError):
        log.warning("auth.audit_unpublished", result="denied", reason=reason)
