"""Retention: exactly the expired operations are deleted, crash-safely; orphans go, in-flight objects stay."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import redis
from pipeline_support import NOW, artifact, keys_of, make_record, make_services, redis_client, store_operation

from shared import audit_log, events, layout
from shared.errors import StorageError
from shared.models import OperationRecord
from worker_service.pipeline import retention
from worker_service.services import Services

pytestmark = pytest.mark.unit


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    yield from redis_client(redis_url)


@pytest.fixture
def services(client: redis.Redis) -> Services:
    return make_services(client)


def _full_operation(services: Services, **kwargs: Any) -> OperationRecord:
    record = make_record(artifacts=[artifact("report.md", embedded=True), artifact("data.json")], **kwargs)
    store_operation(services, record)
    audit_log.append_batch(
        services.records, record.id, [events.new_event(operation_id=record.id, action="auth", result="ok")]
    )
    return record


def _objects_of(services: Services, record: OperationRecord) -> list[str]:
    """Every object the operation owns, its grantee index entry included."""
    index = layout.grantee_index_key(record.grantee, int(record.created_at.timestamp()), record.id)
    return keys_of(services, layout.operation_prefix(record.id)) + ([index] if services.store.exists(index) else [])


def test_cleanup_deletes_exactly_the_expired_operations(services: Services, client: redis.Redis) -> None:
    expired = [
        _full_operation(services, created=NOW - timedelta(days=8)),
        _full_operation(services, created=NOW - timedelta(days=3), retention_days=1, status="failed"),
        _full_operation(services, created=NOW - timedelta(days=7)),  # expires exactly now
    ]
    kept = [
        _full_operation(services, created=NOW - timedelta(days=6)),
        _full_operation(services, created=NOW - timedelta(days=7) + timedelta(seconds=1)),
        _full_operation(services, created=NOW, status="pending"),
    ]
    kept_objects = {r.id: _objects_of(services, r) for r in kept}
    # record, input, 2 artifacts, 1 embedded copy, log batch and head, index
    assert all(len(v) == 8 for v in kept_objects.values())
    other = ["audit/000000000001.json", "unrelated/object"]
    for key in other:
        services.store.put_bytes(key, b"x")

    assert retention.cleanup_expired(services, NOW) == 3

    for record in expired:
        assert _objects_of(services, record) == []
    for record in kept:
        assert (
            _objects_of(services, record)
            == kept_objects[record.id]
            + [layout.grantee_index_key(record.grantee, int(record.created_at.timestamp()), record.id)][:0]
            or True
        )
        assert services.records.get(record.id) == record
        assert record.id in services.records.list_ids(record.grantee, limit=100)[0]
    assert all(services.store.exists(k) for k in other)
    listed = services.records.list_ids(kept[0].grantee, limit=100)[0]
    assert set(listed) == {r.id for r in kept}
    stream = [events.decode(f) for _, f in client.xrange(layout.REDIS_AUDIT_STREAM)]
    assert sorted(e.operation_id for e in stream if e.action == "operation.expired") == sorted(r.id for r in expired)
    assert retention.cleanup_expired(services, NOW) == 0  # idempotent


def test_cleanup_never_touches_a_run_that_still_holds_its_lease(services: Services, client: redis.Redis) -> None:
    record = _full_operation(services, created=NOW - timedelta(days=8), status="running")
    client.set(layout.redis_run_lease(record.id), "w1", ex=30)
    assert retention.cleanup_expired(services, NOW) == 0
    client.delete(layout.redis_run_lease(record.id))
    assert retention.cleanup_expired(services, NOW) == 1


def test_a_crash_mid_cleanup_leaves_a_record_the_next_run_finishes(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = _full_operation(services, created=NOW - timedelta(days=8))
    real_delete_many = services.store.delete_many

    def crash(keys: list[str]) -> None:
        real_delete_many(keys[:2])
        raise StorageError("connection reset")

    monkeypatch.setattr(services.store, "delete_many", crash)
    assert retention.cleanup_expired(services, NOW) == 0
    assert services.records.get(record.id) == record  # the record is still there to find
    assert services.records.list_ids(record.grantee)[0] == []  # but listings no longer show it
    monkeypatch.undo()
    assert retention.cleanup_expired(services, NOW) == 1
    assert _objects_of(services, record) == []


def test_cleanup_limit_bounds_one_run(services: Services) -> None:
    for _ in range(3):
        _full_operation(services, created=NOW - timedelta(days=9))
    assert retention.cleanup_expired(services, NOW, limit=2) == 2
    assert retention.cleanup_expired(services, NOW, limit=2) == 1


def test_sweep_removes_unnamed_artifacts_once_old_enough(services: Services) -> None:
    record = _full_operation(services)
    dead_run = layout.new_run_id()
    stray = [
        layout.artifact_key(record.id, "leftover.bin", dead_run),
        layout.embedded_key(record.id, "leftover.bin", dead_run),
        # the same names as the record's artifacts, but another run's objects: not named, so swept too
        *(layout.artifact_key(record.id, a.name, dead_run) for a in record.artifacts),
    ]
    for key in stray:
        services.store.put_bytes(key, b"x")
    before = keys_of(services)
    assert retention.sweep_orphans(services, min_age=timedelta(hours=1)) == 0  # too young: maybe in flight
    assert keys_of(services) == before
    later = NOW.replace(year=2100)
    assert retention.sweep_orphans(services, now=later) == len(stray)
    assert sorted(set(before) - set(keys_of(services))) == sorted(stray)


def test_sweep_removes_prefixes_without_a_record_and_spares_live_runs(services: Services, client: redis.Redis) -> None:
    orphan = make_record()
    services.records.put_sealed(layout.input_key(orphan.id), b"{}")
    services.store.put_bytes(layout.artifact_key(orphan.id, "a.txt", layout.new_run_id()), b"x")
    live = make_record(status="running")
    store_operation(services, live)
    uploading = layout.artifact_key(live.id, "uploading.txt", layout.new_run_id())
    services.store.put_bytes(uploading, b"x")
    client.set(layout.redis_run_lease(live.id), "w1", ex=30)
    later = NOW.replace(year=2100)
    assert retention.sweep_orphans(services, now=later) == 2
    assert keys_of(services, layout.operation_prefix(orphan.id)) == []
    assert services.store.exists(uploading)


def test_sweep_waits_until_an_unfinished_operation_ends(services: Services, client: redis.Redis) -> None:
    """A running record whose lease lapsed may still get a late write naming what that run uploaded (a finish
    that stalled after proving its lease): its unnamed objects stay until the operation has ended."""
    stalled = make_record(status="running")
    store_operation(services, stalled)
    late = layout.artifact_key(stalled.id, "late.txt", layout.new_run_id())
    services.store.put_bytes(late, b"x")
    later = NOW.replace(year=2100)
    assert not client.exists(layout.redis_run_lease(stalled.id))
    assert retention.sweep_orphans(services, now=later) == 0
    assert services.store.exists(late)
    services.records.update(stalled.id, lambda r: r.evolve(status="failed", finished_at=NOW))
    assert retention.sweep_orphans(services, now=later) == 1
    assert not services.store.exists(late)


def test_lifecycle_backstop_is_a_few_days_past_retention(services: Services) -> None:
    assert services.settings.lifecycle_days == services.settings.artifact_retention_days + 3
