"""Redis state for signed requests: single-use nonces, per-address rate limits and per-client failure budgets.
All fail closed.

A nonce is consumed with one atomic ``SET key 1 NX EX ttl`` (no check-then-insert race between API replicas),
keyed by (keyid, nonce) and never by signature bytes, which an attacker could re-encode. Any Redis error becomes
``Unavailable`` (503): a request is never let through because its replay state could not be recorded.
"""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from shared.errors import AuthError, RateLimited, Unavailable
from shared.layout import redis_auth_failure_key, redis_nonce_key, redis_rate_key

NONCE_GRACE_SECONDS = 60  # kept past ``expires`` so clock skew cannot reopen the window
RATE_WINDOW_SECONDS = 60


def store_unavailable() -> Unavailable:
    return Unavailable("the nonce store is unavailable", code="nonce_store_unavailable")


async def consume_nonce(redis: aioredis.Redis, keyid: str, nonce: str, *, expires: int, now: float) -> None:
    """Mark (keyid, nonce) used until ``expires + 60 s``; ``nonce_replayed`` if it already was."""
    ttl = max(1, int(expires + NONCE_GRACE_SECONDS - now))
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
        retry_after = max(1, int((window + 1) * RATE_WINDOW_SECONDS - now))
        raise RateLimited("too many signed requests for this address", retry_after=retry_after)


class FailureLimited(RateLimited):
    """429 for a client that has used up its refused-request budget: nothing more is verified, looked up on chain
    or audited for it until the window ends, so unauthenticated traffic cannot flood the audit trail or the RPC."""

    def __init__(self, retry_after: int) -> None:
        super().__init__("too many refused requests from this client; retry later", retry_after=retry_after)


def _failure_window(client: str, now: float) -> tuple[str, int]:
    window = int(now // RATE_WINDOW_SECONDS)
    retry_after = max(1, int((window + 1) * RATE_WINDOW_SECONDS - now))
    return redis_auth_failure_key(client, window), retry_after


async def count_failure(redis: aioredis.Redis, client: str, *, limit: int, now: float) -> None:
    """Count one refusal for ``client`` (an IP, see ``api_service.auth``); ``FailureLimited`` once over ``limit``.

    Fixed one-minute window, one INCR and one EXPIRE; ``limit == 0`` disables it. Redis errors are ``Unavailable``.
    """
    if limit <= 0:
        return
    key, retry_after = _failure_window(client, now)
    try:
        async with redis.pipeline(transaction=True) as pipe:
            pipe.incr(key)
            pipe.expire(key, RATE_WINDOW_SECONDS * 2)
            count, _ = await pipe.execute()
    except (RedisError, OSError):
        raise store_unavailable() from None
    if int(count) > limit:
        raise FailureLimited(retry_after)


async def check_failure_budget(redis: aioredis.Redis, client: str, *, limit: int, now: float) -> None:
    """``FailureLimited`` if ``client`` has no refusals left this window (checked before costly work: RPC calls)."""
    if limit <= 0:
        return
    key, retry_after = _failure_window(client, now)
    try:
        count = await redis.get(key)
    except (RedisError, OSError):
        raise store_unavailable() from None
    if count is not None and int(count) >= limit:
        raise FailureLimited(retry_after)
