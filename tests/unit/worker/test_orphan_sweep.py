"""The orphan sweep in bounded runs (issue 14, goal 7): one run costs S3 requests in proportion to the operations
it checks, never to what is stored, and successive runs from the cursor cover the whole bucket: an orphan
placed anywhere is found within a cycle, and nothing live is deleted."""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta

import pytest
import redis
from pipeline_support import NOW, artifact, keys_of, make_record, make_services, redis_client, store_operation

from shared import layout
from shared.errors import StorageError
from shared.models import OperationRecord
from shared.storage.memory import MemoryObjectStore
from tests.helpers.counting_store import CountingStore
from worker_service.pipeline import retention
from worker_service.services import Services

pytestmark = pytest.mark.unit

LATER = NOW.replace(year=2100)  # past every age gate


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    yield from redis_client(redis_url)


def _finished(services: Services) -> OperationRecord:
    record = make_record(artifacts=[artifact("report.md", embedded=True), artifact("data.json")])
    store_operation(services, record)
    return record


def _stray(services: Services, operation_id: str) -> str:
    key = layout.artifact_key(operation_id, "stray.bin", layout.new_run_id())
    services.store.put_bytes(key, b"x")
    return key


def _one_run(services: Services, store: CountingStore, operations: int) -> Counter[str]:
    """The requests of one sweep run from the cursor's start, on a fresh record cache (as a new worker has)."""
    services.redis.delete(retention.SWEEP_CURSOR)
    services = make_services(services.redis, keyring=services.keyring, store=store)
    store.requests.clear()
    retention.sweep_orphans(services, now=LATER, operations=operations)
    return Counter(store.requests)


def test_a_sweep_run_costs_the_same_whatever_is_stored(client: redis.Redis) -> None:
    per_run = 10
    counts = []
    for stored in (30, 600):  # 600 operations: 3,600 objects under operations/, several LIST pages in all
        client.flushdb()
        store = CountingStore(MemoryObjectStore())
        services = make_services(client, store=store)
        records = [_finished(services) for _ in range(stored)]
        first = sorted(r.id for r in records)[:per_run]
        for operation_id in first[::3]:  # orphans within the run's reach: a record read and a delete each
            _stray(services, operation_id)
        counts.append(_one_run(services, store, per_run))
    small, large = counts
    assert small == large
    # a record read per operation checked (each has artifacts), one batch delete per operation with an orphan,
    # one LIST page for the run's objects, one multipart listing per prefix the service writes
    assert large == Counter(get_bytes=per_run, delete_many=4, list=1, list_uploads=len(retention.UPLOAD_PREFIXES))


def test_operations_without_old_artifact_objects_cost_no_record_read(client: redis.Redis) -> None:
    store = CountingStore(MemoryObjectStore())
    services = make_services(client, store=store)
    for _ in range(20):
        store_operation(services, make_record())  # record, input and index only
    assert _one_run(services, store, 50) == Counter(list=1, list_uploads=len(retention.UPLOAD_PREFIXES))


def _live_and_orphans(services: Services, client: redis.Redis, count: int) -> tuple[set[str], set[str]]:
    """``count`` operations of every kind, orphans placed at random among them; returns (live keys, orphans)."""
    rng = random.Random(14)
    orphans: set[str] = set()
    running: list[str] = []
    for n in range(count):
        kind = n % 4
        if kind == 3:  # a prefix without a record: a create that crashed half-way
            ghost = layout.new_operation_id("privacy-audit")
            services.records.put_sealed(layout.input_key(ghost), b"{}")
            orphans.add(layout.input_key(ghost))
            orphans.add(_stray(services, ghost))
            continue
        status = ("succeeded", "running", "pending")[kind]
        record = make_record(status=status, artifacts=[artifact("report.md", embedded=True), artifact("a.json")])
        store_operation(services, record)
        if status == "running":
            client.set(layout.redis_run_lease(record.id), "w1")
            running.append(record.id)
        elif status == "succeeded" and rng.random() < 0.5:
            orphans.add(_stray(services, record.id))
    for operation_id in running[::2]:  # uploads of a live run, or of an unfinished one: not orphans yet
        _stray(services, operation_id)
    live = set(keys_of(services)) - orphans
    return live, orphans


def _cycle(services: Services, operations: int) -> tuple[int, int]:
    """Sweep runs until the cursor wraps to the start; returns (runs, objects deleted)."""
    runs, deleted = 0, 0
    while True:
        deleted += retention.sweep_orphans(services, now=LATER, operations=operations)
        runs += 1
        if not services.redis.exists(retention.SWEEP_CURSOR):
            return runs, deleted
        assert runs < 1000, "the cursor never wrapped"


def test_successive_runs_find_every_orphan_and_delete_nothing_live(client: redis.Redis) -> None:
    services = make_services(client)
    live, orphans = _live_and_orphans(services, client, 57)
    operations = len({key.split("/")[1] for key in live | orphans})
    per_run = 5
    first = retention.sweep_orphans(services, now=LATER, operations=per_run)
    assert first < len(orphans)  # one run checks only part of the bucket
    assert client.exists(retention.SWEEP_CURSOR)
    runs, deleted = _cycle(services, per_run)
    assert 1 + runs in (math.ceil(operations / per_run), math.ceil(operations / per_run) + 1)
    assert first + deleted == len(orphans)
    assert set(keys_of(services)) == live
    # the next cycle finds nothing more, and deletes nothing live
    assert _cycle(services, per_run)[1] == 0
    assert set(keys_of(services)) == live


def test_an_orphan_behind_the_cursor_is_found_by_the_next_cycle(client: redis.Redis) -> None:
    services = make_services(client)
    records = sorted((_finished(services) for _ in range(12)), key=lambda r: r.id)
    assert retention.sweep_orphans(services, now=LATER, operations=6) == 0  # checked the first 6
    behind = _stray(services, records[0].id)
    ahead = _stray(services, records[-1].id)
    assert retention.sweep_orphans(services, now=LATER, operations=6) == 1  # the rest of this cycle
    assert not services.store.exists(ahead)
    assert services.store.exists(behind)
    _cycle(services, 6)
    assert not services.store.exists(behind)


def test_a_lost_cursor_restarts_the_cycle_and_still_covers_everything(client: redis.Redis) -> None:
    services = make_services(client)
    live, orphans = _live_and_orphans(services, client, 40)
    retention.sweep_orphans(services, now=LATER, operations=4)
    retention.sweep_orphans(services, now=LATER, operations=4)
    client.delete(retention.SWEEP_CURSOR)  # Redis flushed mid-cycle
    _cycle(services, 4)
    assert set(keys_of(services)) == live
    assert orphans and not orphans & set(keys_of(services))


def test_the_default_bound_is_the_setting(client: redis.Redis) -> None:
    services = make_services(client, orphan_sweep_operations=2)
    records = sorted((_finished(services) for _ in range(3)), key=lambda r: r.id)
    strays = [_stray(services, r.id) for r in records]
    assert retention.sweep_orphans(services, now=LATER) == 2
    assert services.store.exists(strays[2])
    assert retention.sweep_orphans(services, now=LATER) == 1
    assert not client.exists(retention.SWEEP_CURSOR)
    assert services.settings.orphan_sweep_operations == 2


def test_a_young_orphan_waits_for_a_later_cycle(client: redis.Redis) -> None:
    services = make_services(client)
    record = _finished(services)
    stray = _stray(services, record.id)
    assert retention.sweep_orphans(services, min_age=timedelta(hours=1), operations=10) == 0  # too young
    assert services.store.exists(stray)
    assert retention.sweep_orphans(services, now=LATER, operations=10) == 1


def test_a_failed_delete_does_not_stall_the_cursor(client: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    services = make_services(client)
    records = sorted((_finished(services) for _ in range(4)), key=lambda r: r.id)
    strays = [_stray(services, r.id) for r in records]
    real_delete_many = services.store.delete_many

    def failing_for_the_first(keys: list[str]) -> None:
        if any(key.startswith(layout.operation_prefix(records[0].id)) for key in keys):
            raise StorageError("connection reset")
        real_delete_many(keys)

    monkeypatch.setattr(services.store, "delete_many", failing_for_the_first)
    assert retention.sweep_orphans(services, now=LATER, operations=2) == 1  # the second one still goes
    assert retention.sweep_orphans(services, now=LATER, operations=2) == 2  # and the cursor moved on
    assert [services.store.exists(key) for key in strays] == [True, False, False, False]
    monkeypatch.undo()
    assert _cycle(services, 2)[1] == 1  # the next cycle retries it
