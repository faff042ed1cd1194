"""Resource monitor: dead runs are failed (live or recent ones are not), quotas alert, metrics reflect the pass."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import timedelta

import pytest
import redis
from pipeline_support import NOW, artifact, make_record, make_services, redis_client, store_operation
from prometheus_client import generate_latest

from shared import events, layout
from shared.cancel import CANCELLED_SUMMARY
from worker_service.pipeline import monitor
from worker_service.services import Services

pytestmark = pytest.mark.unit

MAX = 600


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    yield from redis_client(redis_url)


@pytest.fixture
def services(client: redis.Redis) -> Services:
    return make_services(client, max_execution_time=MAX)


def _running(services: Services, started_ago: int, **kwargs: object) -> str:
    record = make_record(status="running", started_at=NOW - timedelta(seconds=started_ago), **kwargs)  # type: ignore[arg-type]
    store_operation(services, record)
    return record.id


def test_only_overdue_runs_without_a_lease_are_failed(services: Services, client: redis.Redis) -> None:
    dead = _running(services, MAX + 400)
    leased = _running(services, MAX + 400)
    client.set(layout.redis_run_lease(leased), "w1", ex=30)
    recent = _running(services, MAX + 100)  # within the grace
    cancelled = _running(services, MAX + 400, cancel_requested=True)

    report = monitor.monitor_resources(services, NOW, grace=300)

    assert sorted(report["failed_dead_runs"]) == sorted([dead, cancelled])
    failed = services.records.get(dead)
    assert failed.status == "failed" and failed.finished_at == NOW
    assert failed.result is not None and failed.result.status == "error"
    assert "worker died" in failed.result.summary and "600 s" in failed.result.summary
    assert services.records.get(cancelled).status == "cancelled"
    ended = services.records.get(cancelled).result
    assert ended is not None and ended.summary.startswith(CANCELLED_SUMMARY)  # cancel's words, from shared.cancel
    assert services.records.get(leased).status == "running"
    assert services.records.get(recent).status == "running"
    assert report["operations"] == {"running": 2, "failed": 1, "cancelled": 1}
    finished = [events.decode(f) for _, f in client.xrange(layout.REDIS_AUDIT_STREAM)]
    assert sorted(e.operation_id or "" for e in finished if e.reason == "worker_lost") == sorted([dead, cancelled])
    # a second pass finds nothing more to do
    assert monitor.monitor_resources(services, NOW, grace=300)["failed_dead_runs"] == []


def test_overdue_pending_operations_are_reported_not_changed(services: Services) -> None:
    record = make_record(status="pending", created=NOW - timedelta(hours=1))
    store_operation(services, record)
    report = monitor.monitor_resources(services, NOW)
    assert report["overdue_pending"] == [record.id]
    assert services.records.get(record.id).status == "pending"


def test_quota_violations_per_operation_and_per_grantee(services: Services) -> None:
    heavy = make_record(artifacts=[artifact("a.bin")], grantee="0x" + "01" * 20)
    light_a = make_record(grantee="0x" + "02" * 20)
    light_b = make_record(grantee="0x" + "02" * 20)
    store_operation(services, heavy, payload=b"x" * 2000)
    store_operation(services, light_a)
    store_operation(services, light_b)
    sizes = {
        r.id: sum(i.size for i in services.store.list(layout.operation_prefix(r.id))) for r in (heavy, light_a, light_b)
    }
    # quotas between the measured sizes: heavy alone breaks the operation quota, the two light ones the grantee's
    per_operation = max(sizes[light_a.id], sizes[light_b.id]) + 1
    per_grantee = sizes[light_a.id] + sizes[light_b.id] - 1
    assert sizes[heavy.id] > per_grantee
    services.settings = replace(services.settings, quota_per_operation=per_operation, quota_per_grantee=per_grantee)
    report = monitor.monitor_resources(services, NOW)
    assert report["operations_over_quota"] == [heavy.id]
    assert sorted(report["grantees_over_quota"]) == ["0x" + "01" * 20, "0x" + "02" * 20]
    assert report["stored_bytes"] == sum(sizes.values())


def test_metrics_come_from_the_latest_snapshot(services: Services, client: redis.Redis) -> None:
    registry = monitor.metrics_registry(client)
    assert b"strongroom_operations" not in generate_latest(registry)  # no pass yet: no stale figures
    store_operation(services, make_record())
    _running(services, MAX + 400)
    client.zadd(layout.REDIS_WORKERS, {"w1": NOW.timestamp(), "w2": 0})
    monitor.monitor_resources(services, NOW)
    text = generate_latest(registry).decode()
    assert 'strongroom_operations{status="succeeded"} 1.0' in text
    assert 'strongroom_operations{status="failed"} 1.0' in text
    assert 'strongroom_operations{status="running"} 0.0' in text
    assert "strongroom_dead_runs_failed 1.0" in text
    assert "strongroom_worker_redis_up 1.0" in text
    assert 'strongroom_audit_events_unpersisted{stream="events"} 1.0' in text  # worker_lost, not yet persisted
    assert 'strongroom_audit_events_unpersisted{stream="refusals"} 0.0' in text
    assert "0x" not in text  # never an address in a label


def test_metrics_server_is_off_unless_a_port_is_set(services: Services) -> None:
    assert monitor.start_metrics_server(services) is False


def test_lost_run_messages_are_sent_again_once_per_interval(services: Services, client: redis.Redis) -> None:
    """A pending operation whose message was lost, or a run whose worker vanished, gets its run task re-sent."""
    sent: list[tuple[str, dict[str, object]]] = []
    services.send_task = lambda name, kwargs: sent.append((name, kwargs))
    lost = make_record(status="pending", created=NOW - timedelta(minutes=10))
    store_operation(services, lost)
    fresh = make_record(status="pending", created=NOW - timedelta(seconds=10))
    store_operation(services, fresh)
    orphaned = _running(services, 300)  # no lease, well within the run deadline
    alive = _running(services, 300)
    client.set(layout.redis_run_lease(alive), "w1", ex=30)

    report = monitor.monitor_resources(services, NOW)

    assert sorted(report["redelivered"]) == sorted([lost.id, orphaned])
    assert sorted(kwargs["operation_id"] for _, kwargs in sent) == sorted([lost.id, orphaned])  # type: ignore[type-var]
    assert {name for name, _ in sent} == {"strongroom.v1.run_operation"}
    assert monitor.monitor_resources(services, NOW)["redelivered"] == []  # not again within the interval


class Alerts:
    """Stands in for the monitor's logger: the ``alert=`` kinds it logged."""

    def __init__(self) -> None:
        self.kinds: list[str] = []

    def __getattr__(self, level: str) -> object:
        return lambda event, **fields: self.kinds.extend([fields["alert"]] if "alert" in fields else [])


def _disk_full(services: Services, client: redis.Redis) -> None:
    client.zadd(layout.REDIS_WORKER_DISK_FULL, {"w1": time.time()})


def _dead_run(services: Services, client: redis.Redis) -> None:
    _running(services, MAX + 400)


def _overdue(services: Services, client: redis.Redis) -> None:
    store_operation(services, make_record(status="pending", created=NOW - timedelta(hours=1)))


def _over_quota(services: Services, client: redis.Redis) -> None:
    store_operation(services, make_record(artifacts=[artifact("a.bin")]), payload=b"x" * 2000)
    services.settings = replace(services.settings, quota_per_operation=1000)


@pytest.mark.parametrize("situation", [_disk_full, _dead_run, _overdue, _over_quota])
def test_a_pass_that_alerted_is_not_idle(
    situation: Callable[[Services, redis.Redis], None],
    services: Services,
    client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``monitor_idle`` (a pass logged at DEBUG) knows every finding: a full worker disk was once left out."""
    alerts = Alerts()
    monkeypatch.setattr(monitor, "log", alerts)
    assert monitor.monitor_idle(monitor.monitor_resources(services, NOW))
    assert alerts.kinds == []
    situation(services, client)
    report = monitor.monitor_resources(services, NOW)
    assert alerts.kinds, "the situation raised no alert"
    assert not monitor.monitor_idle(report)
