"""Redis state for signed requests: single-use nonces, per-address rate limits, per-client failure budgets and the
global ERC-1271 RPC budget. All fail closed.

A nonce is consumed with one atomic ``SET key 1 NX EX ttl`` (no check-then-insert race between API replicas),
keyed by (keyid, nonce) and never by signature bytes, which an attacker could re-encode. Any Redis error becomes
``Unavailable`` (503): a request is never let through because its replay state could not be recorded.

``admit`` is what the verifier calls for a good signature: the nonce, the rate limit and the accepted request's
audit entry in one server-side script, so an accepted request costs one round trip instead of three, and is
never accepted without its audit entry.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError

from shared.errors import AuthError, RateLimited, Unavailable
from shared.events import STREAM_MAXLEN
from shared.layout import (
    REDIS_AUDIT_STREAM,
    redis_auth_failure_key,
    redis_nonce_key,
    redis_rate_key,
    redis_record_version,
    redis_rpc_budget_key,
    redis_wallet_failure_key,
)
from shared.records import TOKEN_TTL, new_token, usable_token

NONCE_GRACE_SECONDS = 60  # kept past ``expires`` so clock skew cannot reopen the window
RATE_WINDOW_SECONDS = 60

# KEYS: nonce, rate counter, audit stream[, a record version token]. ARGV: nonce ttl, rate limit (0: off), rate ttl,
# stream maxlen, a fresh token and its ttl (used only with the fourth key), n, then n strings: the audit entry's
# field/value pairs (none: no entry), then optionally an expected version token and a second entry's pairs (the
# endpoint's event, decided beforehand from the record at that version). Returns {-1} for a replay, else {the
# window's count (0: off)[, the version token, 1 if the second entry was written else 0]}.
# The steps and their order are consume_nonce, enforce_rate_limit, shared.events.publish, for an admitted request
# naming an operation shared.records.aversion (read the token, creating one if none stands) and, only if that token
# is the expected one, shared.events.publish of the second entry, atomically.
_ADMIT_LUA = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then return {-1} end
local limit, count = tonumber(ARGV[2]), 0
if limit > 0 then
  count = redis.call('INCR', KEYS[2])
  redis.call('EXPIRE', KEYS[2], ARGV[3])
  if count > limit then return {count} end
end
local n = tonumber(ARGV[7])
if n > 0 then
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], '*', unpack(ARGV, 8, 7 + n))
end
if #KEYS > 3 then
  local token = redis.call('GET', KEYS[4])
  if not token then
    redis.call('SET', KEYS[4], ARGV[5], 'EX', ARGV[6])
    token = ARGV[5]
  end
  local written = 0
  if #ARGV > 8 + n and token == ARGV[8 + n] then
    redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], '*', unpack(ARGV, 9 + n))
    written = 1
  end
  return {count, token, written}
end
return {count}
"""
_ADMIT_SHA = hashlib.sha1(_ADMIT_LUA.encode("ascii"), usedforsecurity=False).hexdigest()


def store_unavailable() -> Unavailable:
    return Unavailable("the nonce store is unavailable", code="nonce_store_unavailable")


async def consume_nonce(redis: aioredis.Redis, keyid: str, nonce: str, *, expires: int, now: float) -> None:
    """Mark (keyid, nonce) used until ``expires + 60 s``; ``nonce_replayed`` if it already was."""
    ttl = _nonce_ttl(expires, now)
    try:
        fresh = await redis.set(redis_nonce_key(keyid, nonce), b"1", nx=True, ex=ttl)
    except (RedisError, OSError):
        raise store_unavailable() from None
    if not fresh:
        raise AuthError("this nonce has already been used", code="nonce_replayed")


async def enforce_rate_limit(redis: aioredis.Redis, address: str, *, limit: int, now: float) -> None:
    """Fixed one-minute window per address; ``limit == 0`` disables it. Cheap: one INCR and one EXPIRE."""
    if limit <= 0:
        return
    window = int(now // RATE_WINDOW_SECONDS)
    key = redis_rate_key(address, window)
    try:
        async with redis.pipeline(transaction=True) as pipe:
            pipe.incr(key)
            pipe.expire(key, RATE_WINDOW_SECONDS * 2)
            count, _ = await pipe.execute()
    except (RedisError, OSError):
        raise store_unavailable() from None
    if int(count) > limit:
        raise _rate_limited(window, now)


async def admit(
    redis: aioredis.Redis,
    *,
    keyid: str,
    nonce: str,
    expires: int,
    address: str,
    rate_limit: int,
    now: float,
    audit_entry: Mapping[str, str] | None = None,
    operation_id: str | None = None,
    then: tuple[bytes, Mapping[str, str]] | None = None,
) -> bytes | None:
    """For a verified signature: consume its nonce, count it against ``address``'s rate limit, and append
    ``audit_entry`` (a ``shared.events.encode`` entry) to the audit stream, atomically and in one round trip.
    With ``operation_id`` (a request about one operation) the same call returns that record's version token, as
    ``shared.records.aversion`` would (``None`` while a write is in flight), so the API's record cache is checked
    without a round trip of its own.

    ``then`` (with ``operation_id``): ``(version, entry)``, the endpoint's own audit entry, decided from the record
    at ``version`` (the API's cached copy) before this call. It is appended after ``audit_entry``, in the same
    atomic step, only if the record's token is still ``version``: it was written exactly when the returned token
    equals ``version``. Otherwise nothing of it is written and the caller decides on the current record.

    Outcomes are those of ``consume_nonce`` then ``enforce_rate_limit``: ``nonce_replayed`` without counting,
    ``RateLimited`` (nonce consumed, no entry), ``Unavailable`` on any Redis error. The entry is written only for
    an admitted request, so an accepted request is never without it. With nothing to combine (rate limit off, no
    entry, no operation) it is the plain ``SET NX`` of ``consume_nonce``.
    """
    if rate_limit <= 0 and audit_entry is None and operation_id is None:
        await consume_nonce(redis, keyid, nonce, expires=expires, now=now)
        return None
    window = int(now // RATE_WINDOW_SECONDS)
    keys = [redis_nonce_key(keyid, nonce), redis_rate_key(address, window), REDIS_AUDIT_STREAM]
    args: list[str | int | bytes] = [
        _nonce_ttl(expires, now), max(0, rate_limit), RATE_WINDOW_SECONDS * 2, STREAM_MAXLEN, new_token(), TOKEN_TTL,
    ]  # fmt: skip
    if operation_id is not None:
        keys.append(redis_record_version(operation_id))
    elif then is not None:
        raise ValueError("an entry that depends on a record version needs the operation_id")
    entry = [text for pair in (audit_entry or {}).items() for text in pair]
    args += (len(entry), *entry)
    if then is not None:
        args.append(then[0])
        args += [text for pair in then[1].items() for text in pair]
    try:
        try:
            reply = await redis.evalsha(_ADMIT_SHA, len(keys), *keys, *args)
        except NoScriptError:  # first use on this server (or after SCRIPT FLUSH): EVAL also caches it
            reply = await redis.eval(_ADMIT_LUA, len(keys), *keys, *args)
    except (RedisError, OSError):
        raise store_unavailable() from None
    count = int(reply[0])
    if count < 0:
        raise AuthError("this nonce has already been used", code="nonce_replayed")
    if rate_limit > 0 and count > rate_limit:
        raise _rate_limited(window, now)
    return usable_token(reply[1]) if len(reply) > 1 else None


def _nonce_ttl(expires: int, now: float) -> int:
    return max(1, int(expires + NONCE_GRACE_SECONDS - now))


class SignerRateLimited(RateLimited):
    """429 for a verified signer over its per-address rate limit: the one refusal that may name its signer."""


def _rate_limited(window: int, now: float) -> SignerRateLimited:
    retry_after = max(1, int((window + 1) * RATE_WINDOW_SECONDS - now))
    return SignerRateLimited("too many signed requests for this address", retry_after=retry_after)


class FailureLimited(RateLimited):
    """429 for a client that has used up its refused-request budget: its further refusals are not audited until
    the window ends, so one client cannot flood the audit trail; and for a (client, keyid address) pair out of
    budget, the ERC-1271 path is not taken (no RPC call). Good signatures from the client still verify."""

    def __init__(self, retry_after: int) -> None:
        super().__init__("too many refused requests from this client; retry later", retry_after=retry_after)


class RpcBusy(RateLimited):
    """503 with ``Retry-After`` once all API replicas together have made ``STRONGROOM_ETH_RPC_CALLS_PER_MINUTE``
    ERC-1271 RPC calls this minute: the chain is not down, the server is protecting its RPC quota."""

    status = 503
    code = "rpc_busy"
    title = "Contract-wallet verification busy"

    def __init__(self, retry_after: int) -> None:
        super().__init__("too many contract-wallet verifications right now; retry later", retry_after=retry_after)


def _retry_after(now: float) -> tuple[int, int]:
    window = int(now // RATE_WINDOW_SECONDS)
    return window, max(1, int((window + 1) * RATE_WINDOW_SECONDS - now))


async def count_failure(
    redis: aioredis.Redis, client: str, *, limit: int, now: float, address: str | None = None
) -> None:
    """Count one refusal for ``client`` (an IP, see ``api_service.auth``); ``FailureLimited`` once over ``limit``.

    With the keyid ``address`` the request claimed, the refusal is also counted for the (``client``, ``address``)
    pair, the budget that gates the ERC-1271 path (``check_failure_budget``). Fixed one-minute windows, one
    transaction; ``limit == 0`` disables both. Redis errors are ``Unavailable``.
    """
    if limit <= 0:
        return
    window, retry_after = _retry_after(now)
    keys = [redis_auth_failure_key(client, window)]
    if address is not None:
        keys.append(redis_wallet_failure_key(client, address, window))
    try:
        async with redis.pipeline(transaction=True) as pipe:
            for key in keys:
                pipe.incr(key)
                pipe.expire(key, RATE_WINDOW_SECONDS * 2)
            results = await pipe.execute()
    except (RedisError, OSError):
        raise store_unavailable() from None
    if int(results[0]) > limit:
        raise FailureLimited(retry_after)


async def check_failure_budget(
    redis: aioredis.Redis, client: str, *, limit: int, now: float, address: str | None = None
) -> None:
    """``FailureLimited`` if ``client`` has no refusals left this window, checked before costly work.

    With ``address`` only the (``client``, ``address``) pair's refusals count: that is how the ERC-1271 path is
    gated, so a neighbour behind the same NAT or proxy who uses up the IP's budget cannot lock a contract-wallet
    user out (only refusals naming that same wallet, from that same IP, can).
    """
    if limit <= 0:
        return
    window, retry_after = _retry_after(now)
    key = (
        redis_auth_failure_key(client, window) if address is None else redis_wallet_failure_key(client, address, window)
    )
    try:
        count = await redis.get(key)
    except (RedisError, OSError):
        raise store_unavailable() from None
    if count is not None and int(count) >= limit:
        raise FailureLimited(retry_after)


async def spend_rpc_call(redis: aioredis.Redis, *, limit: int, now: float) -> None:
    """Count one ERC-1271 RPC call against the budget shared by all API replicas; ``RpcBusy`` once over ``limit``.

    Called right before each call that the contract-wallet cache cannot answer, so cached answers cost nothing.
    Fixed one-minute window, one INCR and one EXPIRE; ``limit == 0`` disables it. Redis errors are ``Unavailable``.
    """
    if limit <= 0:
        return
    window, retry_after = _retry_after(now)
    key = redis_rpc_budget_key(window)
    try:
        async with redis.pipeline(transaction=True) as pipe:
            pipe.incr(key)
            pipe.expire(key, RATE_WINDOW_SECONDS * 2)
            count, _ = await pipe.execute()
    except (RedisError, OSError):
        raise store_unavailable() from None
    if int(count) > limit:
        raise RpcBusy(retry_after)
