"""Cancel, implemented once (``shared.cancel``) for the API and the worker: one TTL, one 409, one second cancel."""

from __future__ import annotations

from datetime import timedelta

import pytest
import redis

from shared import layout
from shared.cancel import CANCEL_TTL, CANCELLED_SUMMARY, FINISHED_DETAIL, request_cancel
from shared.crypto.keyring import Keyring
from shared.errors import Conflict, Unavailable
from shared.models import OperationRecord, OperationResult, utcnow
from shared.records import OperationStore
from shared.storage.memory import MemoryObjectStore
from tests.helpers.ports import free_port

pytestmark = pytest.mark.integration


@pytest.fixture
def records(redis_connection: redis.Redis) -> OperationStore:
    return OperationStore(MemoryObjectStore(), Keyring.from_json(Keyring.generate_json()), redis_connection)


def make(records: OperationStore, status: str, **changes: object) -> OperationRecord:
    now = utcnow()
    record = OperationRecord(
        id=layout.new_operation_id("privacy-audit"),
        agent="privacy-audit",
        grantee="0x" + "ab" * 20,
        encryption_public_key="pk",
        created_at=now,
        expires_at=now + timedelta(days=1),
    ).evolve(status=status, **changes)
    records.create(record, {})
    return record


def test_a_pending_operation_is_cancelled_at_once(records: OperationStore, redis_connection: redis.Redis) -> None:
    record = make(records, "pending")
    cancelled = request_cancel(records, redis_connection, record.id)
    assert cancelled.status == "cancelled" and cancelled.finished_at is not None
    assert cancelled.result is not None and cancelled.result.summary == CANCELLED_SUMMARY
    assert records.get(record.id) == cancelled
    assert not redis_connection.exists(layout.redis_cancel_key(record.id))  # nothing runs, nothing to signal


def test_a_running_operation_is_flagged_and_a_second_cancel_only_renews_the_flag(
    records: OperationStore, redis_connection: redis.Redis
) -> None:
    record = make(records, "running", started_at=utcnow())
    key = layout.redis_cancel_key(record.id)
    flagged = request_cancel(records, redis_connection, record.id)
    assert flagged.status == "running" and flagged.cancel_requested
    assert 0 < redis_connection.ttl(key) <= CANCEL_TTL

    redis_connection.delete(key)  # e.g. Redis restarted without its data
    writes: list[str] = []
    real_put = records.put
    records.put = lambda updated: (writes.append(updated.id), real_put(updated))  # type: ignore[method-assign]
    again = request_cancel(records, redis_connection, record.id)
    assert again == flagged and writes == []  # the record is left as it is
    assert 0 < redis_connection.ttl(key) <= CANCEL_TTL  # the flag is back


@pytest.mark.parametrize("status", ["succeeded", "failed", "cancelled"])
def test_a_finished_operation_is_one_conflict(
    records: OperationStore, redis_connection: redis.Redis, status: str
) -> None:
    result = OperationResult(status="ok", summary="", execution_time=1)
    record = make(records, status, finished_at=utcnow(), result=result)
    with pytest.raises(Conflict) as info:
        request_cancel(records, redis_connection, record.id)
    assert info.value.code == "operation_finished" and info.value.detail == FINISHED_DETAIL
    assert records.get(record.id) == record


def test_a_flag_that_cannot_be_set_changes_nothing(records: OperationStore, redis_connection: redis.Redis) -> None:
    """The flag is written before the record: a record never claims a cancel its run cannot see."""
    record = make(records, "running", started_at=utcnow())
    down = redis.Redis(port=free_port(), socket_connect_timeout=1)
    with pytest.raises(Unavailable) as info:
        request_cancel(records, down, record.id)
    assert info.value.code == "redis_unavailable"
    assert not records.get(record.id).cancel_requested
