"""Persist audit events from the Redis Stream into the hash-chained access logs in S3.

Delivery is at-least-once and the log holds each event once:

- the consumer group hands each entry to one consumer; entries are acknowledged (XACK) only after the batch
  holding them is in S3, so a crash anywhere before that redelivers them (own pending entries are re-read first,
  entries of a dead consumer are taken over with XAUTOCLAIM once idle);
- an event id already persisted is skipped, whether it is remembered in ``REDIS_AUDIT_SEEN`` (a sorted set of ids
  with their persist time, trimmed after ``SEEN_TTL``) or found in the newest batch of its log (covers a crash
  between the S3 write and the bookkeeping, and a lost Redis).

Events go to their operation's log while the record exists; events that name no operation, a malformed or unknown
one, or that outlive the operation (``operation.expired``) go to the global log, so a deleted operation never
grows a new access-log prefix. Each log is appended under its lock, one batch per log per call.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis

from shared import audit_log, layout
from shared.errors import StrongroomError, Unavailable
from shared.events import decode
from shared.locks import redis_lock
from shared.logging import get_logger
from shared.models import AuditEvent
from worker_service.services import Services

log = get_logger(__name__)

SEEN_TTL = 7 * 24 * 3600  # longer than any redelivery window; the newest-batch check covers the rest
CLAIM_IDLE_MS = 60_000  # an entry pending this long belongs to a dead (or stuck) consumer
CONSUMER_IDLE_MS = 24 * 3600 * 1000  # forget consumers with nothing pending after a day
GLOBAL_ONLY_ACTIONS = frozenset({"operation.expired"})  # the operation's own log is deleted with it
GLOBAL_LOCK = layout.redis_job_lock("audit-global-log")
LOCK_TIMEOUT = 60

Entry = tuple[str, dict[Any, Any] | None]


def default_consumer() -> str:
    """Stable for the life of a process, distinct between processes and hosts."""
    return f"{socket.gethostname()}-{os.getpid()}"


def ensure_group(client: redis.Redis) -> None:
    """Create the consumer group (and the stream) if missing; from the start, so no event is skipped."""
    try:
        client.xgroup_create(layout.REDIS_AUDIT_STREAM, layout.REDIS_AUDIT_GROUP, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def persist_audit_events(
    services: Services,
    *,
    batch_size: int = 500,
    block_ms: int = 0,
    consumer: str | None = None,
    claim_idle_ms: int = CLAIM_IDLE_MS,
) -> int:
    """Move up to ``batch_size`` stream entries into the access logs; return how many new events were stored.

    ``block_ms`` > 0 waits that long for new entries when none are ready (0 returns at once).
    """
    try:
        return _persist(services, consumer or default_consumer(), batch_size, block_ms, claim_idle_ms)
    except redis.RedisError as exc:
        raise Unavailable("audit stream unavailable", code="redis_unavailable") from exc


def _persist(services: Services, name: str, batch_size: int, block_ms: int, claim_idle_ms: int) -> int:
    client = services.redis
    ensure_group(client)
    entries = _take_entries(client, name, batch_size, block_ms, claim_idle_ms)
    if not entries:
        return 0
    events, done = _parse(entries)
    fresh = _drop_seen(client, events)
    done.extend(entry_id for entry_id, event in events if entry_id not in fresh)
    stored = 0
    for target, group in _route(services, fresh).items():
        try:
            stored += _append(services, target, [fresh[eid] for eid in group])
        except StrongroomError as exc:  # leave them pending: this consumer re-reads them next call
            log.warning("audit_append_failed", log=audit_log.log_name(target), error=exc.code, events=len(group))
            continue
        _remember(client, [fresh[eid].id for eid in group])
        done.extend(group)
    if done:
        client.xack(layout.REDIS_AUDIT_STREAM, layout.REDIS_AUDIT_GROUP, *done)
    client.zremrangebyscore(layout.REDIS_AUDIT_SEEN, "-inf", time.time() - SEEN_TTL)
    _prune_consumers(client, name)
    return stored


# --- reading the stream -----------------------------------------------------------------------------------


def _take_entries(client: redis.Redis, name: str, batch_size: int, block_ms: int, claim_idle_ms: int) -> list[Entry]:
    """Own pending entries first, then stale ones of dead consumers, then new ones."""
    stream, group = layout.REDIS_AUDIT_STREAM, layout.REDIS_AUDIT_GROUP
    taken: dict[str, dict[Any, Any] | None] = {}
    for entry_id, fields in _entries(client.xreadgroup(group, name, {stream: "0"}, count=batch_size)):
        taken[entry_id] = fields
    if len(taken) < batch_size:
        claimed = client.xautoclaim(stream, group, name, claim_idle_ms, "0-0", count=batch_size - len(taken))
        for entry_id, fields in _pairs(claimed[1]):
            taken.setdefault(entry_id, fields)
        for entry_id in claimed[2] if len(claimed) > 2 else ():  # trimmed away while pending
            taken.setdefault(_text(entry_id), None)
    if len(taken) < batch_size:
        block = block_ms if block_ms > 0 and not taken else None
        response = client.xreadgroup(group, name, {stream: ">"}, count=batch_size - len(taken), block=block)
        for entry_id, fields in _entries(response):
            taken.setdefault(entry_id, fields)
    return list(taken.items())


def _entries(response: Any) -> Iterator[Entry]:
    """Flatten XREADGROUP's answer (RESP2 list or RESP3 dict) into (id, fields)."""
    if not response:
        return
    streams = response.items() if isinstance(response, dict) else response
    for _stream, messages in streams:
        yield from _pairs(messages[0] if messages and isinstance(messages[0], list) else messages)


def _pairs(messages: Any) -> Iterator[Entry]:
    for entry_id, fields in messages or ():
        yield _text(entry_id), fields or None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _parse(entries: list[Entry]) -> tuple[list[tuple[str, AuditEvent]], list[str]]:
    """Decoded events, and the ids of entries to acknowledge as they are (trimmed or malformed)."""
    events: list[tuple[str, AuditEvent]] = []
    poison: list[str] = []
    for entry_id, fields in entries:
        if not fields:
            poison.append(entry_id)
            continue
        try:
            events.append((entry_id, decode(fields)))
        except (ValueError, TypeError):
            log.error("audit_event_malformed", entry=entry_id)  # kept out of the log: it can never succeed
            poison.append(entry_id)
    return events, poison


# --- deduplication ----------------------------------------------------------------------------------------


def _drop_seen(client: redis.Redis, events: list[tuple[str, AuditEvent]]) -> dict[str, AuditEvent]:
    """Entries (by stream id) whose event id was neither persisted before nor repeated in this call."""
    if not events:
        return {}
    scores = client.zmscore(layout.REDIS_AUDIT_SEEN, [event.id for _, event in events])
    fresh: dict[str, AuditEvent] = {}
    ids: set[str] = set()
    for (entry_id, event), score in zip(events, scores, strict=True):
        if score is None and event.id not in ids:
            ids.add(event.id)
            fresh[entry_id] = event
    return fresh


def _remember(client: redis.Redis, event_ids: list[str]) -> None:
    now = time.time()
    client.zadd(layout.REDIS_AUDIT_SEEN, dict.fromkeys(event_ids, now))


# --- routing and appending --------------------------------------------------------------------------------


def _route(services: Services, events: dict[str, AuditEvent]) -> dict[str | None, list[str]]:
    """Entry ids grouped by target log (``None`` is the global log), in stream order."""
    known: dict[str, bool] = {}
    targets: dict[str | None, list[str]] = {}
    for entry_id, event in events.items():
        op = event.operation_id
        target: str | None = None
        if op and event.action not in GLOBAL_ONLY_ACTIONS and layout.is_operation_id(op):
            if op not in known:
                known[op] = services.store.exists(layout.record_key(op))
            target = op if known[op] else None
        targets.setdefault(target, []).append(entry_id)
    return targets


def _append(services: Services, target: str | None, events: list[AuditEvent]) -> int:
    with _log_lock(services, target):
        batch = audit_log.append_batch(services.records, target, events)
    return len(batch.events) if batch else 0


@contextmanager
def _log_lock(services: Services, target: str | None) -> Iterator[None]:
    if target is None:
        with global_log_lock(services):
            yield
    else:
        with services.records.locked(target):
            yield


@contextmanager
def global_log_lock(services: Services) -> Iterator[None]:
    """The global log's single-writer lock (the operation lock plays this part for an operation's log)."""
    with redis_lock(services.redis, GLOBAL_LOCK, timeout=LOCK_TIMEOUT, wait=15, busy_code="audit_log_busy"):
        yield


def _prune_consumers(client: redis.Redis, current: str) -> None:
    """Forget consumers of exited processes once they hold nothing (XAUTOCLAIM took their entries)."""
    for info in client.xinfo_consumers(layout.REDIS_AUDIT_STREAM, layout.REDIS_AUDIT_GROUP):
        name = _text(info["name"])
        if name != current and int(info["pending"]) == 0 and int(info["idle"]) > CONSUMER_IDLE_MS:
            client.xgroup_delconsumer(layout.REDIS_AUDIT_STREAM, layout.REDIS_AUDIT_GROUP, name)
