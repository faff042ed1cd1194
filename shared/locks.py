"""Redis locks that fail closed: the one pattern for single-writer sections across processes."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, suppress

import redis

from shared.errors import Unavailable


@contextmanager
def redis_lock(client: redis.Redis, key: str, *, timeout: float, wait: float, busy_code: str) -> Iterator[None]:
    """Hold ``key`` for at most ``timeout`` seconds, waiting up to ``wait`` for it.

    Redis unreachable or the lock still busy after ``wait`` raise ``Unavailable`` (the caller retries later), so
    nobody writes unprotected. A holder that dies loses the lock when ``timeout`` runs out.
    """
    lock = client.lock(key, timeout=timeout, blocking_timeout=wait)
    try:
        acquired = lock.acquire()
    except redis.RedisError as exc:
        raise Unavailable("lock service unavailable", code="redis_unavailable") from exc
    if not acquired:
        raise Unavailable("busy, try again", code=busy_code)
    try:
        yield
    finally:
        with suppress(redis.RedisError):  # expired or Redis gone: the lock times out by itself
            lock.release()
