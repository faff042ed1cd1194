"""Persist audit events from the Redis Streams into the hash-chained access logs in S3.

One consumer group reads both streams of ``shared.events``: accepted accesses and worker changes
(``REDIS_AUDIT_STREAM``), then refusals of unproven requests (``REDIS_AUDIT_REFUSALS``, capped on its own so a
flood of them never trims the first). Each call takes up to ``batch_size`` entries from *each* stream, so a
refusal flood cannot slow the persistence of accepted events either.

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

import hmac
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis

from shared import audit_log, layout
from shared.errors import NotFound, StrongroomError, Unavailable
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

Ref = tuple[str, str]  # (stream, entry id): entry ids of two streams can be equal
Entry = tuple[Ref, dict[Any, Any] | None]


def default_consumer() -> str:
    """Stable for the life of a process, distinct between processes and hosts."""
    return f"{socket.gethostname()}-{os.getpid()}"


def ensure_group(client: redis.Redis) -> None:
    """Create the consumer group (and the streams) if missing; from the start, so no event is skipped."""
    for stream in layout.REDIS_AUDIT_STREAMS:
        try:
            client.xgroup_create(stream, layout.REDIS_AUDIT_GROUP, id="0", mkstream=True)
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
    """Move up to ``batch_size`` entries of each stream into the access logs; return how many new events were
    stored.

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
    done.extend(ref for ref, event in events if ref not in fresh)
    stored = 0
    for target, group in _route(services, fresh).items():
        try:
            stored += _append(services, target, [fresh[ref] for ref in group])
        except StrongroomError as exc:  # leave them pending: this consumer re-reads them next call
            log.warning("audit_append_failed", log=audit_log.log_name(target), error=exc.code, events=len(group))
            continue
        _remember(client, [fresh[ref].id for ref in group])
        done.extend(group)
    _ack(client, done)
    client.zremrangebyscore(layout.REDIS_AUDIT_SEEN, "-inf", time.time() - SEEN_TTL)
    for stream in layout.REDIS_AUDIT_STREAMS:
        _prune_consumers(client, stream, name)
    return stored


def _ack(client: redis.Redis, refs: list[Ref]) -> None:
    by_stream: dict[str, list[str]] = {}
    for stream, entry_id in refs:
        by_stream.setdefault(stream, []).append(entry_id)
    for stream, ids in by_stream.items():
        client.xack(stream, layout.REDIS_AUDIT_GROUP, *ids)


# --- reading the stream -----------------------------------------------------------------------------------


def _take_entries(client: redis.Redis, name: str, batch_size: int, block_ms: int, claim_idle_ms: int) -> list[Entry]:
    """Up to ``batch_size`` entries of each stream; if there are none at all, wait up to ``block_ms`` for some."""
    taken: dict[Ref, dict[Any, Any] | None] = {}
    for stream in layout.REDIS_AUDIT_STREAMS:
        _take_from(client, stream, name, batch_size, claim_idle_ms, taken)
    if not taken and block_ms > 0:
        streams: dict[Any, Any] = dict.fromkeys(layout.REDIS_AUDIT_STREAMS, ">")
        response = client.xreadgroup(layout.REDIS_AUDIT_GROUP, name, streams, count=batch_size, block=block_ms)
        for ref, fields in _entries(response):
            taken.setdefault(ref, fields)
    return list(taken.items())


def _take_from(
    client: redis.Redis,
    stream: str,
    name: str,
    batch_size: int,
    claim_idle_ms: int,
    taken: dict[Ref, dict[Any, Any] | None],
) -> None:
    """Own pending entries of ``stream`` first, then stale ones of dead consumers, then new ones (no waiting)."""
    group, start = layout.REDIS_AUDIT_GROUP, len(taken)

    def room() -> int:
        return batch_size - (len(taken) - start)

    for ref, fields in _entries(client.xreadgroup(group, name, {stream: "0"}, count=batch_size)):
        taken[ref] = fields
    if room() > 0:
        claimed = client.xautoclaim(stream, group, name, claim_idle_ms, "0-0", count=room())
        for entry_id, fields in _pairs(claimed[1]):
            taken.setdefault((stream, entry_id), fields)
        for entry_id in claimed[2] if len(claimed) > 2 else ():  # trimmed away while pending
            taken.setdefault((stream, _text(entry_id)), None)
    if room() > 0:
        for ref, fields in _entries(client.xreadgroup(group, name, {stream: ">"}, count=room())):
            taken.setdefault(ref, fields)


def _entries(response: Any) -> Iterator[Entry]:
    """Flatten XREADGROUP's answer (RESP2 list or RESP3 dict) into ((stream, id), fields)."""
    if not response:
        return
    streams = response.items() if isinstance(response, dict) else response
    for stream, messages in streams:
        batch = messages[0] if messages and isinstance(messages[0], list) else messages
        for entry_id, fields in _pairs(batch):
            yield (_text(stream), entry_id), fields


def _pairs(messages: Any) -> Iterator[tuple[str, dict[Any, Any] | None]]:
    for entry_id, fields in messages or ():
        yield _text(entry_id), fields or None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _parse(entries: list[Entry]) -> tuple[list[tuple[Ref, AuditEvent]], list[Ref]]:
    """Decoded events, and the entries to acknowledge as they are (trimmed or malformed)."""
    events: list[tuple[Ref, AuditEvent]] = []
    poison: list[Ref] = []
    for ref, fields in entries:
        if not fields:
            poison.append(ref)
            continue
        try:
            events.append((ref, decode(fields)))
        except (ValueError, TypeError):
            log.error("audit_event_malformed", stream=ref[0], entry=ref[1])  # it can never succeed: drop it
            poison.append(ref)
    return events, poison


# --- deduplication ----------------------------------------------------------------------------------------


def _drop_seen(client: redis.Redis, events: list[tuple[Ref, AuditEvent]]) -> dict[Ref, AuditEvent]:
    """Entries whose event id was neither persisted before nor repeated in this call."""
    if not events:
        return {}
    scores = client.zmscore(layout.REDIS_AUDIT_SEEN, [event.id for _, event in events])
    fresh: dict[Ref, AuditEvent] = {}
    ids: set[str] = set()
    for (ref, event), score in zip(events, scores, strict=True):
        if score is None and event.id not in ids:
            ids.add(event.id)
            fresh[ref] = event
    return fresh


def _remember(client: redis.Redis, event_ids: list[str]) -> None:
    now = time.time()
    client.zadd(layout.REDIS_AUDIT_SEEN, dict.fromkeys(event_ids, now))


# --- routing and appending --------------------------------------------------------------------------------


def _route(services: Services, events: dict[Ref, AuditEvent]) -> dict[str | None, list[Ref]]:
    """Entries grouped by target log (``None`` is the global log), in stream order."""
    known: dict[str, bool] = {}
    targets: dict[str | None, list[Ref]] = {}
    for ref, event in events.items():
        op = event.operation_id
        target: str | None = None
        if op and event.action not in GLOBAL_ONLY_ACTIONS and layout.is_operation_id(op):
            if op not in known:
                known[op] = services.store.exists(layout.record_key(op))
            target = op if known[op] else None
        targets.setdefault(target, []).append(ref)
    return targets


def _append(services: Services, target: str | None, events: list[AuditEvent]) -> int:
    """Append under the log's lock, continuing from the later of head.json and the head kept in Redis (so deleting
    the tail and head.json in S3 does not make the log forget them), then move the Redis head."""
    with _log_lock(services, target):
        anchor = audit_log.read_anchor(services.redis, target)
        batch = audit_log.append_batch(services.records, target, events, anchor=anchor)
        if batch is not None:
            head = audit_log.Head(batch.sequence, batch.digest)
            audit_log.write_anchor(services.redis, target, head, ttl=_anchor_ttl(services, target))
    if batch is None:
        return 0
    stored = len(batch.events)
    first = batch.events[0]
    if first.action == audit_log.GAP_ACTION:  # written by append_batch, not one of ``events``
        stored -= 1
        log.error("audit_log_gap", log=audit_log.log_name(target), sequence=batch.sequence, found=first.reason)
    # The external anchor (docs/audit-log.md): shipped to a log store the S3 writer cannot edit, this line is what
    # exposes a rolled-back head.json; a digest of a batch of random-id events reveals nothing of its content.
    log.info("audit_head", log=audit_log.log_name(target), sequence=batch.sequence, sha256=batch.digest)
    return stored


def _anchor_ttl(services: Services, target: str | None) -> int | None:
    """An operation's log is gone once the lifecycle rule expires its prefix; the global log is kept."""
    return None if target is None else services.settings.lifecycle_days * 24 * 3600


def anchor_problems(services: Services, operation_id: str | None, sequence: int, sha256: str) -> list[str]:
    """Check a log in S3 against a head recorded outside it (an ``audit_head`` log line): batch ``sequence`` must
    still exist with digest ``sha256``. Together with ``audit_log.verify_chain`` (which chains every batch up to
    the stored head) this detects a head rolled back to an older version with the batches after it deleted,
    which S3 alone cannot show. Returns the problems found, none if the log still contains the anchored head."""
    try:
        batch = audit_log.read_batch(services.records, operation_id, sequence)
    except NotFound:
        return [f"batch {sequence} named by the external anchor is missing (tail removed, head rolled back?)"]
    except StrongroomError as exc:
        return [f"batch {sequence} named by the external anchor does not verify ({exc.detail})"]
    if not hmac.compare_digest(batch.digest, sha256.lower()):
        return [f"batch {sequence} differs from the digest in the external anchor"]
    return []


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


def _prune_consumers(client: redis.Redis, stream: str, current: str) -> None:
    """Forget consumers of exited processes once they hold nothing (XAUTOCLAIM took their entries)."""
    for info in client.xinfo_consumers(stream, layout.REDIS_AUDIT_GROUP):
        name = _text(info["name"])
        if name != current and int(info["pending"]) == 0 and int(info["idle"]) > CONSUMER_IDLE_MS:
            client.xgroup_delconsumer(stream, layout.REDIS_AUDIT_GROUP, name)
