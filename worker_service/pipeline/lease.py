"""The run lease: which claim of an operation may upload its artifacts and write its record.

The lease (``layout.redis_run_lease``) holds ``{token}/{run_id}``: ``token`` is the Celery task id (a retry of the
same task may re-claim its own lease), ``run_id`` is fresh per claim and names the run's objects. Every change
after the claim is a compare-and-set on that exact value, so a worker that stalled past the TTL can never refresh,
extend or delete a lease another claim has taken since: it learns it lost and stops.

A claim starts only where no lease exists at all (``take`` is a SET NX). Whoever finds a lease cannot tell from the
value whether its holder is alive (a redelivered copy of a task carries the same task id as the live delivery), so
``await_lapse`` watches it instead: a live holder refreshes it within ``LEASE_REFRESH``, a dead one lets it lapse
within ``LEASE_TTL``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import redis
import structlog

from shared import layout
from shared.errors import Unavailable

log = structlog.get_logger(__name__)

LEASE_TTL = 30  # seconds; a run that stops refreshing for this long is presumed dead
LEASE_REFRESH = 5.0
POLL_INTERVAL = 0.5
_REFRESH_SLACK = 0.25  # seconds; an unrefreshed lease's expiry stays put (up to read jitter), a refresh moves it

# KEYS[1] lease, ARGV[1] expected value, ARGV[2] TTL in ms. 1 = refreshed, 0 = someone else's (or gone).
_REFRESH = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
# KEYS[1] lease, ARGV[1] expected value. Deletes only our own lease.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class LeaseLost(Unavailable):
    """Another claim may own the run now: stop uploading, write nothing (the task retry re-claims)."""

    code = "run_lease_lost"


def as_text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def holder_token(value: bytes | str) -> str:
    """The task token of a lease value (a value without a run part is all token)."""
    text = as_text(value)
    token, sep, _run = text.rpartition("/")
    return token if sep else text


def release_if(client: redis.Redis, operation_id: str, value: bytes | str) -> bool:
    """Delete the lease only while it still holds ``value`` (atomic: a newer claim's lease survives)."""
    script = client.register_script(_RELEASE)
    return bool(script(keys=[layout.redis_run_lease(operation_id)], args=[as_text(value)]))


@dataclass(frozen=True)
class RunLease:
    """One claim's lease; every method is a single atomic Redis command or script."""

    client: redis.Redis
    operation_id: str
    token: str
    run_id: str

    @classmethod
    def new(cls, client: redis.Redis, operation_id: str, token: str) -> RunLease:
        return cls(client, operation_id, token, layout.new_run_id())

    @property
    def key(self) -> str:
        return layout.redis_run_lease(self.operation_id)

    @property
    def value(self) -> str:
        return f"{self.token}/{self.run_id}"

    def take(self) -> bool:
        """Create the lease if nobody holds one; ``False`` means somebody does (never overwrite a holder)."""
        return bool(self.client.set(self.key, self.value, ex=LEASE_TTL, nx=True))

    def refresh(self) -> bool:
        """Extend the lease if it is still ours; ``False`` means it lapsed or another claim took it."""
        script = self.client.register_script(_REFRESH)
        return bool(script(keys=[self.key], args=[self.value, int(LEASE_TTL * 1000)]))

    def release(self) -> bool:
        return release_if(self.client, self.operation_id, self.value)

    def held(self) -> bool:
        return self.is_value(self.client.get(self.key))

    def is_value(self, holder: bytes | str | None) -> bool:
        """``holder`` (a GET of the lease) is this claim's lease."""
        return holder is not None and as_text(holder) == self.value


def await_lapse(client: redis.Redis, operation_id: str) -> bool:
    """Watch another holder's lease: ``True`` once it is gone, ``False`` as soon as it proves alive.

    Alive means refreshed (its expiry moved later) or replaced by another claim. A holder that shows neither for a
    full refresh interval past its remaining TTL is treated as alive too (a lease without expiry is not ours to
    break). Called outside the operation lock: it may take up to ``LEASE_TTL``.
    """
    key = layout.redis_run_lease(operation_id)
    first, expires = _lease_state(client, key)
    if first is None:
        return True
    deadline = max(expires, time.monotonic()) + LEASE_REFRESH + POLL_INTERVAL
    while time.monotonic() < deadline:
        time.sleep(POLL_INTERVAL)
        value, now_expires = _lease_state(client, key)
        if value is None:
            return True
        if value != first or now_expires > expires + _REFRESH_SLACK:
            return False
    return False


def _lease_state(client: redis.Redis, key: str) -> tuple[bytes | None, float]:
    """The lease value and when it expires (``time.monotonic`` scale; now if it has no TTL), read atomically."""
    pipe = client.pipeline(transaction=True)
    pipe.get(key)
    pipe.pttl(key)
    value, ttl_ms = pipe.execute()
    return value, time.monotonic() + max(int(ttl_ms), 0) / 1000


class RunProbe:
    """Called by the runner's watchdog (and the upload keep-alive): keeps the lease fresh, reports a cancel.

    Two ways to lose the lease, both final (``lease_lost``): the compare-and-set refresh finds another value or
    none (a stale worker must not resurrect or steal it), or Redis stayed unreachable for most of the TTL (by then
    another worker may legitimately have re-claimed the operation). Shorter Redis hiccups do not stop the agent.
    """

    def __init__(self, lease: RunLease) -> None:
        self.lease = lease
        self.lease_lost = False
        self._retired = False
        self._mutex = threading.Lock()  # the agent watchdog and the keep-alive thread both call in
        self._last_refresh = self._last_ok = time.monotonic()

    def __call__(self) -> bool:
        """The watchdog's question: stop the agent? (lease lost, or the grantee cancelled)."""
        if not self.keep_fresh():
            return True
        try:
            cancelled = bool(self.lease.client.exists(layout.redis_cancel_key(self.lease.operation_id)))
        except redis.RedisError as exc:
            return self._redis_failed(exc)
        with self._mutex:
            self._last_ok = time.monotonic()
        return cancelled

    def keep_fresh(self) -> bool:
        """Refresh the lease when due; ``False`` once it is lost (final)."""
        with self._mutex:
            if self.lease_lost or self._retired:
                return not self.lease_lost
            now = time.monotonic()
            if now - self._last_refresh < LEASE_REFRESH:
                return True
            try:
                refreshed = self.lease.refresh()
            except redis.RedisError as exc:
                return not self._redis_failed_locked(exc, now)
            if not refreshed:
                log.warning("run.lease_taken", operation_id=self.lease.operation_id)
                self.lease_lost = True
                return False
            self._last_refresh = self._last_ok = now
            return True

    def _redis_failed(self, exc: redis.RedisError) -> bool:
        with self._mutex:
            return self._redis_failed_locked(exc, time.monotonic())

    def _redis_failed_locked(self, exc: redis.RedisError, now: float) -> bool:
        """Log a failed probe; ``True`` (lost) once Redis stayed unreachable for most of the TTL."""
        log.warning("run.probe_failed", error=type(exc).__name__)
        if now - self._last_ok > LEASE_TTL * 0.8:
            self.lease_lost = True
        return self.lease_lost

    def owns_lease(self) -> bool:
        return not self.lease_lost and self.lease.held()

    def ensure_owner(self) -> None:
        """Raise ``LeaseLost`` unless this run still holds the lease (called before each upload)."""
        if not self.owns_lease():
            self.lease_lost = True
            raise LeaseLost("lost the run lease")

    def confirm_owner(self) -> bool:
        """Extend the lease to a full TTL if it is still ours (one compare-and-set): the check right before the
        record write, so the write starts with the whole TTL ahead of it."""
        with self._mutex:  # not short-cut by ``lease_lost``: our value still there means nobody else held it
            if not self.lease.refresh():
                self.lease_lost = True
                return False
            self._last_refresh = self._last_ok = time.monotonic()
            return True

    def release(self) -> bool:
        """Stop refreshing and delete the lease if it is still ours (the run is over, or will be retried)."""
        with self._mutex:
            self._retired = True
        return self.lease.release()

    @contextmanager
    def kept_alive(self) -> Iterator[None]:
        """Keep refreshing the lease from a thread for as long as the run owns the operation: while the agent runs
        (beside the watchdog), while it uploads, and while the record is written, so none of them is ever mistaken
        for a dead worker and re-claimed under its feet."""
        stop = threading.Event()

        def refresh() -> None:
            while not stop.wait(POLL_INTERVAL) and self.keep_fresh() and not self._retired:
                pass

        thread = threading.Thread(target=refresh, name=f"lease-{self.lease.operation_id}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=LEASE_REFRESH)


__all__ = [
    "LEASE_REFRESH",
    "LEASE_TTL",
    "POLL_INTERVAL",
    "LeaseLost",
    "RunLease",
    "RunProbe",
    "await_lapse",
    "holder_token",
    "release_if",
]
