"""Audit events on their way from the process that decides to the worker that persists them.

Events go to a Redis Stream and the worker's consumer group appends them to the operation's hash-chained access
log in S3. ``new_event`` gives every event a unique id so the consumer can deduplicate an at-least-once delivery.

There are two streams, because ``XADD ... MAXLEN ~`` trims the oldest entries whether or not they were consumed:

- ``REDIS_AUDIT_STREAM`` (``publish``/``apublish``): accepted accesses and every change the worker makes. Only
  callers whose volume is bounded write here (a verified signer under its rate limit, the worker); its
  ``STREAM_MAXLEN`` is a memory bound far above what the consumer ever lags behind, not a working limit.
- ``REDIS_AUDIT_REFUSALS`` (``publish_refusal``/``apublish_refusal``): refusals of requests that proved nobody.
  Anyone on the internet can cause those (an IPv6 /48 holds 65,536 per-/64 failure budgets), so they get their own,
  smaller cap (``STRONGROOM_AUDIT_REFUSALS_MAXLEN``): a flood trims old refusals, never an accepted access.
"""

from __future__ import annotations

import uuid
from typing import Any

import redis
import redis.asyncio as aioredis

from shared.layout import REDIS_AUDIT_REFUSALS, REDIS_AUDIT_STREAM
from shared.models import AuditEvent, utcnow

STREAM_MAXLEN = 1_000_000  # approximate; a memory bound (a few hundred MB) for a consumer that is down for hours
REFUSALS_MAXLEN = 100_000  # the default of STRONGROOM_AUDIT_REFUSALS_MAXLEN


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


def publish_refusal(client: redis.Redis, event: AuditEvent, *, maxlen: int = REFUSALS_MAXLEN) -> None:
    """Append the refusal of an unproven request to the refusal stream (capped at about ``maxlen`` entries)."""
    client.xadd(REDIS_AUDIT_REFUSALS, _fields(event), maxlen=maxlen, approximate=True)  # type: ignore[arg-type]


async def apublish_refusal(client: aioredis.Redis, event: AuditEvent, *, maxlen: int = REFUSALS_MAXLEN) -> None:
    """``publish_refusal`` for the API's event loop."""
    await client.xadd(REDIS_AUDIT_REFUSALS, _fields(event), maxlen=maxlen, approximate=True)  # type: ignore[arg-type]
