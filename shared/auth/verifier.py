"""Server side of ERC-8128 signed requests: framework-agnostic, async, fail closed.

The order of checks is deliberate: everything that is pure and cheap (headers, parameters, clock, chain,
authority, digest) runs before the secp256k1 recovery, the recovery runs before any Redis write, and the nonce is
consumed only once the signature is known to be good, so nobody can burn another signer's nonces. The rate limit
counts only fresh, verified requests, so replaying a captured request cannot exhaust its signer's quota. Those
Redis steps, and the caller's audit event for an accepted request, run as one atomic script (``replay.admit``):
one round trip per accepted request. Recovery calls libsecp256k1 directly (``recovery.py``).

The API counts refusals per client (``SignedRequest.client``) and per (client, keyid address) pair; the verifier
consults the pair's budget before the one costly step a refusal can trigger, the ERC-1271 RPC path, so a client
that keeps failing for one address gets 429 ``FailureLimited`` instead of more RPC calls, while a neighbour behind
the same NAT failing for other addresses cannot lock a contract-wallet user out. Every RPC call that the wallet
cache cannot answer is also charged to one budget shared by all replicas (``STRONGROOM_ETH_RPC_CALLS_PER_MINUTE``,
503 ``rpc_busy`` past it), which bounds what many clients cycling many addresses can cost. Good EOA signatures
never touch either budget.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache

import redis.asyncio as aioredis

from shared.auth.base import (
    DIGEST_ALGORITHMS,
    ComponentError,
    RequestParts,
    request_bound_components,
    signature_base,
)
from shared.auth.contract_wallets import ContractWallets
from shared.auth.headers import ParsedSignature, malformed, parse_dictionary, parse_signature
from shared.auth.recovery import eip191_digest, recover_address
from shared.auth.replay import admit, check_failure_budget, spend_rpc_call
from shared.errors import AuthError, NotGrantee
from shared.events import encode
from shared.models import AuditEvent
from shared.settings import Settings


@dataclass(frozen=True)
class SignedRequest:
    """What the verifier needs from an HTTP request. ``path``/``query`` are raw (percent-encoded) as sent."""

    method: str
    authority: str
    path: str
    query: str
    headers: Mapping[str, str]
    body: bytes
    client: str | None = None  # who sent it (IP or /64), for the failure budget; None: not counted


@dataclass(frozen=True)
class VerifiedSigner:
    """Who signed, proven: ``address`` is lowercase 0x (an EOA, or an ERC-1271 contract wallet)."""

    address: str
    chain_id: int
    keyid: str
    nonce: str
    created: int
    expires: int
    # The version token of the operation the caller named in ``verify`` (read in the admission's round trip).
    record_version: bytes | None = None
    # The event ``verify``'s ``prejudge`` returned was written in the admission's step (the record was unchanged).
    prejudged: bool = False


class Verifier:
    """Verifies one signed request end to end; see ``docs/signing.md`` for the rules and the error codes.

    ``contract_wallets`` answers ERC-1271 questions; leave it ``None`` to build one from ``settings.eth_rpc_url``
    (and to refuse contract wallets when no URL is set).
    """

    def __init__(
        self,
        settings: Settings,
        redis: aioredis.Redis,
        *,
        clock: Callable[[], float] = time.time,
        contract_wallets: ContractWallets | None = None,
    ) -> None:
        self._settings = settings
        self._redis = redis
        self._clock = clock
        if contract_wallets is None:
            from shared.auth.contract_wallets import Web3ContractWallets

            contract_wallets = Web3ContractWallets.from_settings(settings)
        self._contract_wallets = contract_wallets

    async def verify(
        self,
        request: SignedRequest,
        *,
        audit: Callable[[VerifiedSigner], AuditEvent] | None = None,
        operation_id: str | None = None,
        prejudge: Callable[[VerifiedSigner], tuple[bytes, AuditEvent] | None] | None = None,
    ) -> VerifiedSigner:
        """Return the proven signer, or raise ``AuthError`` (401, with ``code``), ``RateLimited`` or ``Unavailable``.

        ``audit`` builds the event that records an accepted request; it is appended to the audit stream in the
        same atomic Redis step that consumes the nonce and counts the rate limit (one round trip, and never an
        accepted request without its event). Refusals are not recorded here: the caller knows whom to tell.
        ``operation_id``: the request is about that operation; its record version token comes back on the signer
        (``record_version``), read in that same step.

        ``prejudge`` (with ``operation_id``), called once the signature is proven and before the admission: the
        caller's own outcome decided from a copy of the record, as ``(its version token, the event)``, or
        ``None``. The event is written in the admission's step only if the record is still at that version; then
        the signer says ``prejudged`` and the caller must act on exactly that decision, else on the current record.
        """
        headers = {name.lower(): value for name, value in request.headers.items()}
        parsed = parse_signature(headers)
        now = self._clock()
        self._check_policy(parsed, request, now)
        if "content-digest" in parsed.covered:  # a digest nobody signed proves nothing, so it is not checked
            check_content_digest(headers.get("content-digest"), request.body)
        parts = RequestParts(request.method, request.authority, request.path, request.query, headers)
        try:
            base = signature_base(parsed.covered, parsed.params, parts)
        except ComponentError as exc:
            raise malformed(str(exc)) from None
        await self._check_signature(parsed, base, request.client, now)
        signer = VerifiedSigner(
            address=parsed.address,
            chain_id=parsed.chain_id,
            keyid=parsed.keyid,
            nonce=parsed.nonce,
            created=parsed.created,
            expires=parsed.expires,
        )
        decided = prejudge(signer) if prejudge is not None and operation_id is not None else None
        version = await admit(
            self._redis,
            keyid=parsed.keyid,
            nonce=parsed.nonce,
            expires=parsed.expires,
            address=parsed.address,
            rate_limit=self._settings.rate_limit_per_minute,
            now=now,
            audit_entry=encode(audit(signer)) if audit is not None else None,
            operation_id=operation_id,
            then=None if decided is None else (decided[0], encode(decided[1])),
        )
        if operation_id is None:
            return signer
        prejudged = decided is not None and version is not None and hmac.compare_digest(version, decided[0])
        return dataclasses.replace(signer, record_version=version, prejudged=prejudged)

    def _check_policy(self, parsed: ParsedSignature, request: SignedRequest, now: float) -> None:
        settings = self._settings
        required = request_bound_components(request.query, request.body)
        missing = [name for name in required if name not in parsed.covered]
        if missing:
            raise malformed(f"the signature must cover {', '.join(missing)} (ERC-8128 Request-Bound)")
        if parsed.expires - parsed.created > settings.signature_max_window:
            raise AuthError(f"expires - created exceeds {settings.signature_max_window} s", code="signature_expired")
        if now > parsed.expires:
            raise AuthError("the signature has expired", code="signature_expired")
        if now < parsed.created - settings.signature_clock_skew:
            raise AuthError("the signature is not valid yet (created is in the future)", code="signature_expired")
        if parsed.chain_id not in settings.allowed_chain_ids:
            raise AuthError("the keyid chain id is not accepted", code="chain_not_allowed")
        if settings.public_authorities and request.authority not in settings.public_authorities:
            raise AuthError("the request authority is not served here", code="authority_not_allowed")

    async def _check_signature(self, parsed: ParsedSignature, base: str, client: str | None, now: float) -> None:
        """EOA recovery first (local, cheap). The ERC-1271 path costs RPC calls, so it is taken only while this
        (client, keyid address) pair has failures left in its budget, each call not answered from cache is charged
        to the global RPC budget, and ``eth_call`` is made only when the keyid address holds contract code."""
        digest = eip191_digest(base)
        recovered = recover_address(digest, parsed.signature)
        if recovered is not None and hmac.compare_digest(recovered, parsed.address):
            return
        invalid = AuthError("the signature does not match the keyid address", code="signature_invalid")
        wallets = self._contract_wallets
        if wallets is None:
            raise invalid  # without an RPC endpoint a contract wallet and a wrong key look the same
        if client is not None:
            limit = self._settings.auth_failures_per_minute
            await check_failure_budget(self._redis, client, limit=limit, now=now, address=parsed.address)

        async def spend() -> None:
            await spend_rpc_call(self._redis, limit=self._settings.eth_rpc_calls_per_minute, now=self._clock())

        if not await wallets.has_code(parsed.chain_id, parsed.address, before_rpc=spend):
            raise invalid  # an EOA: no contract could accept it, so no eth_call
        # ERC-8128 s. 4: a wallet is asked about the EIP-191 hash of the signature base.
        chain_id, address, signature = parsed.chain_id, parsed.address, parsed.signature
        if not await wallets.is_valid_signature(chain_id, address, digest, signature, before_rpc=spend):
            raise invalid


def check_content_digest(header: str | None, body: bytes) -> None:
    """RFC 9530: a member whose algorithm we know (sha-256 or sha-512) is required, and every such member must
    match the body; members with other algorithms are ignored, as the RFC says."""
    if header is None:
        raise AuthError("Content-Digest is required", code="digest_mismatch")
    known = _known_digests(header)
    if not known:
        raise AuthError("Content-Digest must include sha-256 or sha-512", code="digest_mismatch")
    for algorithm, value in known:
        if value is None:
            raise malformed("Content-Digest values must be byte sequences")
        actual = hashlib.new(DIGEST_ALGORITHMS[algorithm], body).digest()
        if not hmac.compare_digest(actual, value):
            raise AuthError("Content-Digest does not match the body", code="digest_mismatch")


@lru_cache(maxsize=64)
def _known_digests(header: str) -> tuple[tuple[str, bytes | None], ...]:
    """The members of a ``Content-Digest`` value whose algorithm we know, in order, ``None`` for a value that is
    not a byte sequence (RFC 9530 section 2: unknown algorithms are ignored). Cached by the raw value, since
    every empty-body request (each GET) sends the same one; values that do not parse raise and are not cached."""
    members = parse_dictionary("Content-Digest", header)
    return tuple(
        (algorithm, member[0] if isinstance(member, tuple) and isinstance(member[0], bytes) else None)
        for algorithm, member in members.items()
        if algorithm in DIGEST_ALGORITHMS
    )


def ensure_grantee(signer: VerifiedSigner, grantee: str) -> None:
    """403 unless the proven signer is ``grantee`` (addresses compared lowercase, in constant time)."""
    if not hmac.compare_digest(signer.address.lower().encode(), grantee.lower().encode()):
        raise NotGrantee("the signer is not the grantee of this operation")
