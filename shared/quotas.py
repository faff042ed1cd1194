"""Quota counters per grantee, in Redis, rebuilt from S3 (the truth) when Redis has lost them.

Three quotas (``shared.grants.Quotas``):

- **concurrent operations**: a sorted set of the grantee's unfinished operation ids, scored by a deadline after
  which an entry no longer counts (a run that died without saying so cannot hold a slot forever);
- **operations per hour**: a sorted set of operation ids scored by creation time, a sliding hour;
- **stored bytes**: an integer, charged by the worker before it uploads (an operation that would cross the limit
  fails with ``quota_exceeded`` and stores nothing) and credited by deletes and cleanup.

Admission (both operation quotas) and charging are single Lua scripts, so twenty simultaneous creates against a
quota of two admit exactly two. Each grantee's counters carry a ``built`` marker; when it is missing (a fresh or
flushed Redis) the counters are rebuilt from the grantee's index and records in S3 before they are used.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime

import redis
from redis.exceptions import RedisError

from shared.errors import QuotaExceeded, Unavailable
from shared.layout import REDIS_PREFIX
from shared.models import OperationRecord, Quotas

HOUR = 3600
QUEUE_ALLOWANCE = HOUR  # how long a pending operation may wait for a worker and still hold its slot
RUN_ALLOWANCE = 120  # beyond the execution limit: storing, retries


@dataclass(frozen=True)
class Usage:
    concurrent_operations: int
    operations_last_hour: int
    stored_bytes: int


def _key(address: str, what: str) -> str:
    return f"{REDIS_PREFIX}quota:{address.lower()}:{what}"


# KEYS: active, hourly. ARGV: now, deadline, concurrent limit (-1 none), hourly limit (-1 none), operation id.
# Returns {0, 0} admitted; {1, 0} concurrent quota; {2, seconds until a slot frees} hourly quota.
_ADMIT = """
local now = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - 3600)
local concurrent = tonumber(ARGV[3])
local hourly = tonumber(ARGV[4])
if concurrent >= 0 and redis.call('ZCARD', KEYS[1]) >= concurrent then
  return {1, 0}
end
if hourly >= 0 and redis.call('ZCARD', KEYS[2]) >= hourly then
  local oldest = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
  local wait = 1
  if oldest[2] then wait = math.max(1, math.ceil(tonumber(oldest[2]) + 3600 - now)) end
  return {2, wait}
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[5])
redis.call('ZADD', KEYS[2], now, ARGV[5])
redis.call('EXPIRE', KEYS[1], math.max(1, math.ceil(tonumber(ARGV[2]) - now)))
redis.call('EXPIRE', KEYS[2], 3600)
return {0, 0}
"""

# KEYS: bytes. ARGV: amount, limit (-1 none). Returns the new total, or -1 when the limit would be crossed.
_CHARGE = """
local total = tonumber(redis.call('GET', KEYS[1]) or '0')
local amount = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
if limit >= 0 and total + amount > limit then
  return -1
end
return redis.call('INCRBY', KEYS[1], amount)
"""

# KEYS: bytes. ARGV: amount. Never below zero (a credit for bytes counted before a rebuild).
_CREDIT = """
local total = tonumber(redis.call('GET', KEYS[1]) or '0')
local amount = math.min(total, tonumber(ARGV[1]))
if amount <= 0 then return total end
return redis.call('DECRBY', KEYS[1], amount)
"""


# KEYS: active, hourly, bytes, built. ARGV: stored bytes, active count, hourly count, ttl active, ttl hourly, then
# (score, member) pairs of active followed by those of hourly. Only the first rebuild after a loss applies: the
# marker is checked and set in the same script, so a concurrent rebuild cannot erase admissions made meanwhile.
_REBUILD = """
if redis.call('EXISTS', KEYS[4]) == 1 then return 0 end
local n_active = tonumber(ARGV[2])
local n_hourly = tonumber(ARGV[3])
local i = 6
for _ = 1, n_active do redis.call('ZADD', KEYS[1], ARGV[i], ARGV[i + 1]); i = i + 2 end
for _ = 1, n_hourly do redis.call('ZADD', KEYS[2], ARGV[i], ARGV[i + 1]); i = i + 2 end
if n_active > 0 then redis.call('EXPIRE', KEYS[1], ARGV[4]) end
if n_hourly > 0 then redis.call('EXPIRE', KEYS[2], ARGV[5]) end
redis.call('SET', KEYS[3], ARGV[1])
redis.call('SET', KEYS[4], '1')
return 1
"""


def _limit(value: int | None) -> int:
    return -1 if value is None else value


RecordsOf = Callable[[str], Iterable[OperationRecord]]


class QuotaBook:
    """The quota counters of every grantee. ``records_of(address)`` yields a grantee's records (for rebuilds)."""

    def __init__(self, client: redis.Redis, records_of: RecordsOf, *, max_execution_time: int) -> None:
        self._redis = client
        self._records_of = records_of
        self._run_allowance = max_execution_time + RUN_ALLOWANCE
        self._admit = client.register_script(_ADMIT)
        self._charge = client.register_script(_CHARGE)
        self._credit = client.register_script(_CREDIT)
        self._rebuild = client.register_script(_REBUILD)

    # --- operations -----------------------------------------------------------------------------------------

    def admit(self, address: str, operation_id: str, quotas: Quotas, now: datetime) -> None:
        """Count a new operation against ``address``'s operation quotas, or raise ``QuotaExceeded``."""
        if quotas.concurrent_operations is None and quotas.operations_per_hour is None:
            return
        self._ensure_built(address, now)
        stamp = now.timestamp()
        args: list[str | float | int] = [
            stamp,
            stamp + QUEUE_ALLOWANCE + self._run_allowance,
            _limit(quotas.concurrent_operations),
            _limit(quotas.operations_per_hour),
            operation_id,
        ]
        try:
            outcome, wait = self._admit(keys=[_key(address, "active"), _key(address, "hourly")], args=args)
        except (RedisError, OSError):
            raise Unavailable("quota counters are unavailable; try again", code="redis_unavailable") from None
        if int(outcome) == 1:
            raise QuotaExceeded(
                "concurrent_operations",
                f"quota exceeded: concurrent_operations ({quotas.concurrent_operations} running or queued); "
                "wait for one to finish",
            )
        if int(outcome) == 2:
            raise QuotaExceeded(
                "operations_per_hour",
                f"quota exceeded: operations_per_hour ({quotas.operations_per_hour})",
                retry_after=int(wait),
            )

    def started(self, address: str, operation_id: str, now: datetime) -> None:
        """A worker started the run: its slot now lasts the execution limit from here, not from creation."""
        self._quiet(
            lambda: self._redis.zadd(
                _key(address, "active"), {operation_id: now.timestamp() + self._run_allowance}, xx=True
            )
        )

    def finished(self, address: str, operation_id: str) -> None:
        """The operation reached a final state: it no longer holds a concurrency slot."""
        self._quiet(lambda: self._redis.zrem(_key(address, "active"), operation_id))

    # --- stored bytes ---------------------------------------------------------------------------------------

    def charge(self, address: str, amount: int, quotas: Quotas, now: datetime) -> None:
        """Count ``amount`` stored bytes, or raise ``QuotaExceeded`` (and count nothing)."""
        self._ensure_built(address, now)
        try:
            total = self._charge(keys=[_key(address, "bytes")], args=[amount, _limit(quotas.stored_bytes)])
        except (RedisError, OSError):
            raise Unavailable("quota counters are unavailable; try again", code="redis_unavailable") from None
        if int(total) < 0:
            raise QuotaExceeded(
                "stored_bytes",
                f"quota exceeded: stored_bytes ({quotas.stored_bytes}); delete artifacts or wait for them to expire",
            )

    def credit(self, address: str, amount: int) -> None:
        """``amount`` stored bytes were deleted."""
        if amount > 0:
            self._quiet(lambda: self._credit(keys=[_key(address, "bytes")], args=[amount]))

    # --- reading and rebuilding -----------------------------------------------------------------------------

    def usage(self, address: str, now: datetime) -> Usage:
        self._ensure_built(address, now)
        stamp = now.timestamp()
        try:
            pipe = self._redis.pipeline(transaction=False)
            pipe.zcount(_key(address, "active"), f"({stamp}", "+inf")
            pipe.zcount(_key(address, "hourly"), f"({stamp - HOUR}", "+inf")
            pipe.get(_key(address, "bytes"))
            active, hourly, stored = pipe.execute()
        except (RedisError, OSError):
            raise Unavailable("quota counters are unavailable; try again", code="redis_unavailable") from None
        return Usage(int(active), int(hourly), int(stored or 0))

    def _ensure_built(self, address: str, now: datetime) -> None:
        try:
            if self._redis.exists(_key(address, "built")):
                return
        except (RedisError, OSError):
            raise Unavailable("quota counters are unavailable; try again", code="redis_unavailable") from None
        self.rebuild(address, now)

    def rebuild(self, address: str, now: datetime) -> None:
        """Recount ``address``'s quotas from its records in S3 (the truth) and mark them built."""
        stamp = now.timestamp()
        active: dict[str, float] = {}
        hourly: dict[str, float] = {}
        stored = 0
        for record in self._records_of(address):
            created = record.created_at.timestamp()
            if not record.finished:
                begun = record.started_at.timestamp() if record.started_at else None
                deadline = begun + self._run_allowance if begun else created + QUEUE_ALLOWANCE + self._run_allowance
                if deadline > stamp:
                    active[record.id] = deadline
            if created > stamp - HOUR:
                hourly[record.id] = created
            stored += sum(artifact.size for artifact in record.artifacts)  # stored until cleanup deletes them
        args: list[str | float | int] = [
            stored,
            len(active),
            len(hourly),
            math.ceil(max(active.values(), default=stamp) - stamp) + HOUR,
            2 * HOUR,
        ]
        for members in (active, hourly):
            for member, score in members.items():
                args += [score, member]
        keys = [_key(address, what) for what in ("active", "hourly", "bytes", "built")]
        try:
            self._rebuild(keys=keys, args=args)
        except (RedisError, OSError):
            raise Unavailable("quota counters are unavailable; try again", code="redis_unavailable") from None

    def _quiet(self, action: Callable[[], object]) -> None:
        """Bookkeeping after the fact: a Redis error leaves a stale entry that its deadline or a rebuild repairs."""
        try:
            action()
        except (RedisError, OSError):
            return
