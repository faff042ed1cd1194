"""Server side of ERC-8128 signed requests: framework-agnostic, async, fail closed.

The order of checks is deliberate: everything that is pure and cheap (headers, parameters, clock, chain,
authority, digest) runs before the secp256k1 recovery, the recovery runs before any Redis write, and the nonce is
consumed only once the signature is known to be good, so nobody can burn another signer's nonces. The rate limit
counts only fresh, verified requests, so replaying a captured request cannot exhaust its signer's quota.

The API counts refusals per client (``SignedRequest.client``); the verifier consults that budget before the one
costly step a refusal can trigger, the ERC-1271 RPC path, so a client that has used it up gets 429
``FailureLimited`` instead of more RPC calls. Good EOA signatures from the same client still verify.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import redis.asyncio as aioredis
from eth_account import Account
from eth_account.messages import SignableMessage, encode_defunct

from shared.auth.base import DIGEST_ALGORITHMS, REQUIRED_COMPONENTS, ComponentError, RequestParts, signature_base
from shared.auth.contract_wallets import ContractWallets
from shared.auth.headers import ParsedSignature, malformed, parse_dictionary, parse_signature
from shared.auth.replay import check_failure_budget, consume_nonce, enforce_rate_limit
from shared.errors import AuthError, NotGrantee
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

    async def verify(self, request: SignedRequest) -> VerifiedSigner:
        """Return the proven signer, or raise ``AuthError`` (401, with ``code``), ``RateLimited`` or ``Unavailable``."""
        headers = {name.lower(): value for name, value in request.headers.items()}
        parsed = parse_signature(headers)
        now = self._clock()
        self._check_policy(parsed, request, now)
        check_content_digest(headers.get("content-digest"), request.body)
        parts = RequestParts(request.method, request.authority, request.path, request.query, headers)
        try:
            base = signature_base(parsed.covered, parsed.params, parts)
        except ComponentError as exc:
            raise malformed(str(exc)) from None
        await self._check_signature(parsed, base, request.client, now)
        await consume_nonce(self._redis, parsed.keyid, parsed.nonce, expires=parsed.expires, now=now)
        await enforce_rate_limit(self._redis, parsed.address, limit=self._settings.rate_limit_per_minute, now=now)
        return VerifiedSigner(
            address=parsed.address,
            chain_id=parsed.chain_id,
            keyid=parsed.keyid,
            nonce=parsed.nonce,
            created=parsed.created,
            expires=parsed.expires,
        )

    def _check_policy(self, parsed: ParsedSignature, request: SignedRequest, now: float) -> None:
        settings = self._settings
        missing = [name for name in REQUIRED_COMPONENTS if name not in parsed.covered]
        if missing:
            raise malformed(f"the signature must cover {', '.join(missing)}")
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
        """EOA recovery first (local, cheap). The ERC-1271 path costs RPC calls, so it is taken only for a client
        with failures left in its budget, and only when the keyid address holds contract code."""
        message = encode_defunct(text=base)
        if len(parsed.signature) == 65 and _recover(message, parsed.signature) == parsed.address:
            return
        invalid = AuthError("the signature does not match the keyid address", code="signature_invalid")
        wallets = self._contract_wallets
        if wallets is None:
            raise invalid  # without an RPC endpoint a contract wallet and a wrong key look the same
        if client is not None:
            limit = self._settings.auth_failures_per_minute
            await check_failure_budget(self._redis, client, limit=limit, now=now)
        if not await wallets.has_code(parsed.chain_id, parsed.address):
            raise invalid  # an EOA: no contract could accept it, so no eth_call
        if not await wallets.is_valid_signature(
            parsed.chain_id, parsed.address, eip191_hash(message), parsed.signature
        ):
            raise invalid


def eip191_hash(message: SignableMessage) -> bytes:
    """The 32-byte hash ``personal_sign`` signs; it is what ERC-1271 wallets are asked about (ERC-8128 s. 4)."""
    from eth_utils import keccak

    return keccak(b"\x19" + message.version + message.header + message.body)


def _recover(message: SignableMessage, signature: bytes) -> str | None:
    """EIP-191 recovery; accepts v as 27/28 or 0/1. ``None`` for signatures that cannot be recovered."""
    if signature[64] in (0, 1):
        signature = signature[:64] + bytes([signature[64] + 27])
    try:
        return str(Account.recover_message(message, signature=signature)).lower()
    except Exception:  # eth_keys raises several types for out-of-range r/s/v: all mean "not this signer"
        return None


def check_content_digest(header: str | None, body: bytes) -> None:
    """RFC 9530: a sha-256 member is required; every member whose algorithm we know must match the body."""
    if header is None:
        raise AuthError("Content-Digest is required", code="digest_mismatch")
    members = parse_dictionary("Content-Digest", header)
    if "sha-256" not in members:
        raise AuthError("Content-Digest must include sha-256", code="digest_mismatch")
    for algorithm, member in members.items():
        if algorithm not in DIGEST_ALGORITHMS:
            continue  # RFC 9530 section 2: unknown algorithms are ignored
        value = member[0] if isinstance(member, tuple) else None
        if not isinstance(value, bytes):
            raise malformed("Content-Digest values must be byte sequences")
        actual = hashlib.new(DIGEST_ALGORITHMS[algorithm], body).digest()
        if not hmac.compare_digest(actual, value):
            raise AuthError("Content-Digest does not match the body", code="digest_mismatch")


def ensure_grantee(signer: VerifiedSigner, grantee: str) -> None:
    """403 unless the proven signer is ``grantee`` (addresses compared lowercase, in constant time)."""
    if not hmac.compare_digest(signer.address.lower().encode(), grantee.lower().encode()):
        raise NotGrantee("the signer is not the grantee of this operation")
