"""Audit events on their way from the process that decides to the worker that persists them.

Events go to a Redis Stream (bounded, approximate trim) and the worker's consumer group appends them to the
operation's hash-chained access log in S3. ``new_event`` gives every event a unique id so the consumer can
deduplicate an at-least-once delivery.
"""

from __future__ import annotations

import uuid
from typing import Any

import redis
import redis.asyncio as aioredis

from shared.layout import REDIS_AUDIT_STREAM
from shared.models import AuditEvent, utcnow

STREAM_MAXLEN = 1_000_000


def new_event(**fields: Any) -> AuditEvent:
    return AuditEvent(id=uuid.uuid4().hex, time=utcnow(), **fields)


def _fields(event: AuditEvent) -> dict[str, str]:
    return {"event": event.model_dump_json()}


def encode(event: AuditEvent) -> dict[str, str]:
    """The stream entry ``publish`` writes, for callers that append it themselves (the API's admission script)."""
    return _fields(event)


def decode(fields: dict[Any, Any]) -> AuditEvent:
    """Parse a stream entry written by ``publish`` (bytes or str keys, depending on the client)."""
    raw = fields.get(b"event", fields.get("event"))
    if raw is None:
        raise ValueError("stream entry has no event field")
    return AuditEvent.model_validate_json(raw)


def publish(client: redis.Redis, event: AuditEvent) -> None:
    client.xadd(REDIS_AUDIT_STREAM, _fields(event), maxlen=STREAM_MAXLEN, approximate=True)  # type: ignore[arg-type]


async def apublish(client: aioredis.Redis, event: AuditEvent) -> None:
    await client.xadd(REDIS_AUDIT_STREAM, _fields(event), maxlen=STREAM_MAXLEN, approximate=True)  # type: ignore[arg-type]
