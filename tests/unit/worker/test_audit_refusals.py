"""Review finding 7: refusals of unproven requests travel on their own capped stream, so a flood of them (from
however many client addresses) trims old refusals, never an accepted access that is still waiting to be persisted.
Real Redis, the real admission script, the real consumer."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import pytest
import redis
import redis.asyncio as aioredis
from pipeline_support import TEST_DB, make_record, make_services, redis_client, store_operation

from shared import audit_log, layout
from shared.auth.replay import admit
from shared.events import encode, new_event, publish, publish_refusal
from shared.models import AuditEvent
from worker_service.pipeline import audit
from worker_service.services import Services

pytestmark = pytest.mark.unit

REFUSALS_CAP = 200  # far below the flood; approximate trimming keeps whole stream nodes (100 entries by default)
FLOOD = 3_000


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    yield from redis_client(redis_url)


@pytest.fixture
def services(client: redis.Redis) -> Services:
    return make_services(client)


def _refusal() -> AuditEvent:
    return new_event(action="auth", result="denied", reason="signature_missing", actor=None, operation_id=None)


def _admit_with_event(redis_url: str, event: AuditEvent) -> None:
    """Accept a request the way the verifier does: nonce, rate limit and its event in one script."""

    async def run() -> None:
        db = aioredis.Redis.from_url(f"{redis_url.rsplit('/', 1)[0]}/{TEST_DB}")
        try:
            await admit(
                db,
                keyid="erc8128:1:0x" + "11" * 20,
                nonce=event.id,
                expires=int(time.time()) + 60,
                address="0x" + "11" * 20,
                rate_limit=600,
                now=time.time(),
                audit_entry=encode(event),
            )
        finally:
            await db.aclose()

    asyncio.run(run())


def _flood(client: redis.Redis, count: int, *, maxlen: int) -> None:
    with client.pipeline(transaction=False) as pipe:
        for _ in range(count):
            publish_refusal(pipe, _refusal(), maxlen=maxlen)
        pipe.execute()


def _logged(services: Services, op: str | None) -> list[AuditEvent]:
    return [e for batch in audit_log.iter_batches(services.records, op) for e in batch.events]


def _pending(client: redis.Redis, stream: str) -> int:
    return int(client.xpending(stream, layout.REDIS_AUDIT_GROUP)["pending"])


def test_a_refusal_flood_past_its_cap_does_not_evict_an_accepted_event(
    services: Services, client: redis.Redis, redis_url: str
) -> None:
    record = make_record()
    store_operation(services, record)
    audit.ensure_group(client)  # the consumer exists and is behind: nothing is persisted until the flood is over
    accepted = new_event(action="auth", result="allowed", actor="0x" + "11" * 20, operation_id=record.id)
    change = new_event(action="operation.finished", result="ok", operation_id=record.id)
    _admit_with_event(redis_url, accepted)
    publish(client, change)
    _flood(client, FLOOD, maxlen=REFUSALS_CAP)

    kept = client.xlen(layout.REDIS_AUDIT_REFUSALS)
    assert kept < FLOOD  # the cap really trimmed the refusal stream...
    assert client.xlen(layout.REDIS_AUDIT_STREAM) == 2  # ...and never touched the accepted one
    stored = audit.persist_audit_events(services, consumer="c1", batch_size=FLOOD)
    assert stored == 2 + kept
    assert [e.id for e in _logged(services, record.id)] == [accepted.id, change.id]
    assert len(_logged(services, None)) == kept
    assert all(e.result == "denied" for e in _logged(services, None))
    assert _pending(client, layout.REDIS_AUDIT_STREAM) == _pending(client, layout.REDIS_AUDIT_REFUSALS) == 0
    assert audit_log.verify_chain(services.records, record.id).ok
    assert audit_log.verify_chain(services.records, None).ok


def test_a_refusal_backlog_does_not_delay_accepted_events(services: Services, client: redis.Redis) -> None:
    """Each call takes up to batch_size entries of each stream: refusals queued first cannot crowd out an access."""
    record = make_record()
    store_operation(services, record)
    _flood(client, 50, maxlen=10_000)
    accepted = new_event(action="artifact.url", result="allowed", actor="0x" + "22" * 20, operation_id=record.id)
    publish(client, accepted)
    assert audit.persist_audit_events(services, consumer="c1", batch_size=10) == 11
    assert [e.id for e in _logged(services, record.id)] == [accepted.id]
    assert len(_logged(services, None)) == 10
    while audit.persist_audit_events(services, consumer="c1", batch_size=10):
        pass
    assert len(_logged(services, None)) == 50


def test_equal_entry_ids_in_both_streams_are_two_entries(services: Services, client: redis.Redis) -> None:
    """Stream ids are per stream: the consumer must not merge (or acknowledge) one stream's entry as the other's."""
    first, second = _refusal(), new_event(action="key.rotated", result="ok")
    client.xadd(layout.REDIS_AUDIT_STREAM, encode(second), id="1-1")  # type: ignore[arg-type]
    client.xadd(layout.REDIS_AUDIT_REFUSALS, encode(first), id="1-1")  # type: ignore[arg-type]
    assert audit.persist_audit_events(services, consumer="c1") == 2
    assert [e.id for e in _logged(services, None)] == [second.id, first.id]  # accepted/changes stream first
    assert _pending(client, layout.REDIS_AUDIT_STREAM) == _pending(client, layout.REDIS_AUDIT_REFUSALS) == 0


def test_a_dead_consumers_refusals_are_taken_over(
    services: Services, client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    publish_refusal(client, _refusal())

    def crash(*_args: object) -> None:
        raise SystemExit("killed after the S3 write")

    monkeypatch.setattr(audit, "_remember", crash)
    with pytest.raises(SystemExit):
        audit.persist_audit_events(services, consumer="dead")
    monkeypatch.undo()
    assert _pending(client, layout.REDIS_AUDIT_REFUSALS) == 1
    assert audit.persist_audit_events(services, consumer="alive", claim_idle_ms=0) == 0  # already in the log
    assert _pending(client, layout.REDIS_AUDIT_REFUSALS) == 0
    assert len(_logged(services, None)) == 1


def test_a_blocking_call_wakes_for_a_refusal(services: Services, client: redis.Redis) -> None:
    """With nothing ready, the consumer waits on both streams at once, not only on the accepted one."""
    audit.ensure_group(client)
    late = threading.Timer(0.2, publish_refusal, args=(client, _refusal()))
    late.start()
    try:
        assert audit.persist_audit_events(services, consumer="c1", block_ms=10_000) == 1
    finally:
        late.join()
    assert audit.persist_audit_events(services, consumer="c1") == 0
