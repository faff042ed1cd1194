"""The resource monitor's running totals (issue 14, goal 7): a pass costs S3 requests in proportion to what
changed, never to what is stored, and its figures equal a full walk of the bucket across creates, run
results, deletes, cleanup, a lost ledger and changes nobody noted."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import redis
from pipeline_support import NOW, artifact, make_record, make_services, redis_client, store_operation

from shared import layout
from shared.models import OperationRecord
from tests.helpers.counting_store import CountingStore
from worker_service.pipeline import monitor, retention
from worker_service.services import Services

pytestmark = pytest.mark.unit


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    yield from redis_client(redis_url)


@pytest.fixture
def counting() -> CountingStore:
    return CountingStore()


@pytest.fixture
def services(client: redis.Redis, counting: CountingStore) -> Services:
    return make_services(client, store=counting, max_execution_time=600)


def walked(services: Services) -> dict[str, Any]:
    """What the monitor used to compute by walking everything: the truth the totals must equal."""
    statuses: Counter[str] = Counter()
    stored = 0
    for operation_id, objects in retention.objects_by_operation(services):
        stored += sum(info.size for info in objects)
        if services.store.exists(layout.record_key(operation_id)):
            statuses[services.records.get(operation_id).status] += 1
    return {"stored_bytes": stored, "operations": {s: n for s, n in statuses.items() if n}}


def figures(report: dict[str, Any]) -> dict[str, Any]:
    return {"stored_bytes": report["stored_bytes"], "operations": report["operations"]}


def fill(services: Services, count: int, **kwargs: Any) -> list[OperationRecord]:
    records = [make_record(artifacts=[artifact("a.txt")], **kwargs) for _ in range(count)]
    for record in records:
        store_operation(services, record)
    return records


def test_requests_per_pass_do_not_depend_on_what_is_stored(
    services: Services, counting: CountingStore, client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(monitor, "RECONCILE_PER_PASS", 10)
    fill(services, 20)
    monitor.monitor_resources(services, NOW)  # builds the ledger: one walk, once
    counts = []
    for more in (0, 280):
        fill(services, more)
        monitor.monitor_resources(services, NOW)  # takes in what was just created
        changed = fill(services, 3, status="pending", created=NOW)  # the same change at 20 and at 300 stored
        client.delete(f"{layout.REDIS_MONITOR_LEDGER}:cursor")  # the reconciliation's slice starts at the same place
        counting.take()
        report = monitor.monitor_resources(services, NOW)
        counts.append(counting.take())
        assert report["operations"]["pending"] == 3 and report["operations"]["succeeded"] == 20 + more
        for record in changed:
            services.records.delete_record(record.id)
            services.store.delete_many([info.key for info in services.store.list(layout.operation_prefix(record.id))])
    assert counts[0] == counts[1]
    # the changed operations (a LIST and a record read each) and a reconciliation slice (one LIST, a record read
    # per operation), nothing per stored one
    assert counts[1] <= 2 * 3 + 10 + 1


def test_totals_follow_creates_runs_deletes_and_cleanup(services: Services, client: redis.Redis) -> None:
    heavy = make_record(artifacts=[artifact("a.bin"), artifact("b.bin", embedded=True)], grantee="0x" + "01" * 20)
    store_operation(services, heavy, payload=b"x" * 5000)
    fill(services, 4)
    assert figures(monitor.monitor_resources(services, NOW)) == walked(services)

    pending = fill(services, 2, status="pending", created=NOW - timedelta(minutes=1))
    services.records.put(pending[0].evolve(status="running", started_at=NOW))
    assert figures(monitor.monitor_resources(services, NOW)) == walked(services)

    services.records.put(pending[0].evolve(status="succeeded", artifacts=[artifact("c.txt")]))
    services.store.put_bytes(layout.artifact_key(pending[0].id, "c.txt", "0" * 16), b"y" * 300)
    services.records.delete_record(pending[1].id)  # a delete half done: objects without a record still count
    report = monitor.monitor_resources(services, NOW)
    assert figures(report) == walked(services)
    assert report["operations"] == {"succeeded": 6}

    expired = fill(services, 3, created=NOW - timedelta(days=30))
    monitor.monitor_resources(services, NOW)
    assert retention.cleanup_expired(services, NOW) == 3
    report = monitor.monitor_resources(services, NOW)
    assert figures(report) == walked(services)
    assert not any(client.hexists(f"{layout.REDIS_MONITOR_LEDGER}:entries", r.id) for r in expired)


def test_quota_alerts_come_from_the_totals(services: Services) -> None:
    heavy = make_record(artifacts=[artifact("a.bin")], grantee="0x" + "01" * 20)
    store_operation(services, heavy, payload=b"x" * 4000)
    light = fill(services, 2, grantee="0x" + "02" * 20)
    monitor.monitor_resources(services, NOW)
    sizes = {r.id: sum(i.size for i in services.store.list(layout.operation_prefix(r.id))) for r in [heavy, *light]}
    services.settings = services.settings.__class__(
        **{**services.settings.__dict__, "quota_per_operation": sizes[heavy.id] - 1, "quota_per_grantee": 1}
    )
    report = monitor.monitor_resources(services, NOW)
    assert report["operations_over_quota"] == [heavy.id]
    assert sorted(report["grantees_over_quota"]) == ["0x" + "01" * 20, "0x" + "02" * 20]


def test_a_lost_ledger_is_rebuilt_from_the_bucket(services: Services, client: redis.Redis) -> None:
    fill(services, 5)
    first = monitor.monitor_resources(services, NOW)
    for key in client.scan_iter(f"{layout.REDIS_MONITOR_LEDGER}*"):
        client.delete(key)  # a Redis restarted without persistence
    client.delete(layout.REDIS_MONITOR_CHANGED)
    assert figures(monitor.monitor_resources(services, NOW)) == figures(first) == walked(services)


def test_changes_nobody_noted_are_found_by_the_reconciliation(
    services: Services, client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(monitor, "RECONCILE_PER_PASS", 3)
    records = fill(services, 7)
    monitor.monitor_resources(services, NOW)
    # Objects written without a record write (an access-log entry, a crashed run's leftover), and a record
    # written while Redis lost the note: the totals are wrong until the reconciliation reaches them.
    services.store.put_bytes(layout.operation_prefix(records[2].id) + "access_log/x", b"z" * 700)
    services.records.put(records[5].evolve(status="failed"))
    client.delete(layout.REDIS_MONITOR_CHANGED)
    services.store.put_bytes(layout.operation_prefix(layout.new_operation_id("privacy-audit")) + "input.json", b"o")
    for _ in range(4):  # a whole cycle of slices of 3 over 8 operations, whatever the cursor's start
        report = monitor.monitor_resources(services, NOW)
    assert figures(report) == walked(services)
    assert report["operations"] == {"succeeded": 6, "failed": 1}


def test_only_old_pending_and_running_operations_are_read(services: Services, counting: CountingStore) -> None:
    fill(services, 30)
    young = fill(services, 2, status="pending", created=NOW - timedelta(seconds=5))
    old = fill(services, 1, status="pending", created=NOW - timedelta(hours=2))
    monitor.monitor_resources(services, NOW)
    counting.take()
    report = monitor.monitor_resources(services, NOW, grace=0)
    assert report["overdue_pending"] == [old[0].id]
    assert young[0].id not in report["overdue_pending"]
    assert counting.requests["get_bytes"] <= 1 + 2 * monitor.RECONCILE_PER_PASS
