"""``persist_audit_events``: stream -> access logs, at-least-once, each event stored once (real Redis)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
from pipeline_support import make_record, make_services, redis_client, store_operation

from shared import audit_log, layout
from shared.errors import StorageError
from shared.events import new_event, publish
from shared.models import AuditEvent
from worker_service.pipeline import audit
from worker_service.services import Services

pytestmark = pytest.mark.unit


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    yield from redis_client(redis_url)


@pytest.fixture
def services(client: redis.Redis) -> Services:
    return make_services(client)


def _event(op: str | None, action: str = "artifact.url") -> AuditEvent:
    return new_event(operation_id=op, actor="0x" + "22" * 20, action=action, result="allowed", request_id="r1")


def _logged(services: Services, op: str | None) -> list[AuditEvent]:
    return [e for batch in audit_log.iter_batches(services.records, op) for e in batch.events]


def _pending(client: redis.Redis) -> int:
    return int(client.xpending(layout.REDIS_AUDIT_STREAM, layout.REDIS_AUDIT_GROUP)["pending"])


def test_events_are_grouped_into_one_batch_per_log_and_acknowledged(services: Services, client: redis.Redis) -> None:
    a, b = make_record(), make_record()
    store_operation(services, a)
    store_operation(services, b)
    sent = [_event(a.id), _event(b.id), _event(a.id), _event(None, "auth")]
    for event in sent:
        publish(client, event)
    assert audit.persist_audit_events(services, consumer="c1") == 4
    assert [e.id for e in _logged(services, a.id)] == [sent[0].id, sent[2].id]
    assert [e.id for e in _logged(services, b.id)] == [sent[1].id]
    assert [e.id for e in _logged(services, None)] == [sent[3].id]
    assert _logged(services, a.id)[0] == sent[0]  # every field survives
    assert _pending(client) == 0
    assert audit.persist_audit_events(services, consumer="c1") == 0
    for op in (a.id, b.id, None):
        assert audit_log.verify_chain(services.records, op).ok


def test_duplicate_delivery_of_the_same_event_is_persisted_once(services: Services, client: redis.Redis) -> None:
    record = make_record()
    store_operation(services, record)
    event = _event(record.id)
    publish(client, event)
    publish(client, event)  # same id twice in one call
    assert audit.persist_audit_events(services, consumer="c1") == 1
    publish(client, event)  # and again later
    assert audit.persist_audit_events(services, consumer="c1") == 0
    client.delete(layout.REDIS_AUDIT_SEEN)  # Redis lost its memory: the newest batch still knows the id
    publish(client, event)
    assert audit.persist_audit_events(services, consumer="c1") == 0
    assert [e.id for e in _logged(services, record.id)] == [event.id]
    assert _pending(client) == 0


def test_a_crash_before_the_ack_redelivers_without_duplicating(
    services: Services, client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = make_record()
    store_operation(services, record)
    events = [_event(record.id) for _ in range(3)]
    for event in events:
        publish(client, event)

    def crash(*_args: Any) -> None:
        raise SystemExit("killed after the S3 write")

    monkeypatch.setattr(audit, "_remember", crash)
    with pytest.raises(SystemExit):
        audit.persist_audit_events(services, consumer="dead")
    monkeypatch.undo()
    assert _pending(client) == 3
    # another consumer takes the dead one's entries once they are idle long enough
    assert audit.persist_audit_events(services, consumer="alive", claim_idle_ms=0) == 0
    assert _pending(client) == 0
    assert [e.id for e in _logged(services, record.id)] == [e.id for e in events]
    assert audit_log.verify_chain(services.records, record.id).batches == 1


def test_a_failed_s3_write_leaves_the_entries_pending_for_the_next_call(
    services: Services, client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = make_record()
    store_operation(services, record)
    publish(client, _event(record.id))

    def fail(*_args: Any, **_kwargs: Any) -> None:
        raise StorageError("S3 said no")

    monkeypatch.setattr(audit_log, "append_batch", fail)
    assert audit.persist_audit_events(services, consumer="c1") == 0
    assert _pending(client) == 1
    monkeypatch.undo()
    assert audit.persist_audit_events(services, consumer="c1") == 1
    assert _pending(client) == 0


def test_events_of_unknown_or_expired_operations_go_to_the_global_log(services: Services, client: redis.Redis) -> None:
    record = make_record()
    store_operation(services, record)
    unknown = layout.new_operation_id("privacy-audit")
    publish(client, _event(unknown))
    publish(client, _event(record.id, "operation.expired"))
    assert audit.persist_audit_events(services, consumer="c1") == 2
    assert [e.operation_id for e in _logged(services, None)] == [unknown, record.id]
    assert not list(services.store.list(layout.operation_prefix(unknown)))
    assert _logged(services, record.id) == []


def test_malformed_entries_are_dropped_not_retried_forever(services: Services, client: redis.Redis) -> None:
    client.xadd(layout.REDIS_AUDIT_STREAM, {"event": "not json"})
    client.xadd(layout.REDIS_AUDIT_STREAM, {"other": "x"})
    publish(client, _event(None, "auth"))
    assert audit.persist_audit_events(services, consumer="c1") == 1
    assert _pending(client) == 0


def test_batch_size_bounds_one_call(services: Services, client: redis.Redis) -> None:
    for _ in range(5):
        publish(client, _event(None, "auth"))
    assert audit.persist_audit_events(services, consumer="c1", batch_size=2) == 2
    assert audit.persist_audit_events(services, consumer="c1", batch_size=10) == 3
    assert len(_logged(services, None)) == 5
