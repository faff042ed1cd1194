"""Task wiring: contract names, retry policy, the beat schedule, job locks and the heartbeat (real Redis)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
from pipeline_support import make_record, make_services

from shared import contracts, layout
from shared.errors import StorageError, Unavailable
from shared.events import decode
from shared.settings import Settings
from worker_service import tasks
from worker_service.celery_app import app, celery_settings
from worker_service.heartbeat import Heartbeat
from worker_service.schedule import beat_schedule

TEST_DB = 13


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(f"{redis_url.rsplit('/', 1)[0]}/{TEST_DB}")
    connection.flushdb()
    yield connection
    connection.flushdb()
    connection.close()


@pytest.mark.unit
def test_every_contract_task_is_registered_with_bounded_retries() -> None:
    names = {
        contracts.RunOperation.TASK,
        contracts.CancelOperation.TASK,
        contracts.CLEANUP_EXPIRED,
        contracts.MONITOR_RESOURCES,
        contracts.ROTATE_KEYS,
        contracts.PERSIST_AUDIT,
        contracts.SWEEP_ORPHANS,
        contracts.HEARTBEAT,
    }
    assert names <= set(app.tasks)
    run = app.tasks[contracts.RunOperation.TASK]
    assert run.acks_late
    for name in names:  # one base class: the same bounded retries of transient errors everywhere
        task = app.tasks[name]
        assert isinstance(task, tasks.StrongroomTask), name
        assert task.max_retries == tasks.MAX_RETRIES
        assert {Unavailable, StorageError, redis.ConnectionError} <= set(task.autoretry_for)
        assert hasattr(task, "_orig_run"), f"{name} is not wrapped for automatic retries"


@pytest.mark.unit
def test_periodic_jobs_are_the_pipeline_functions() -> None:
    """Registered by function object, not by a "module:function" string resolved at run time."""
    from worker_service.pipeline import audit, monitor, retention, rotation

    jobs = {
        contracts.PERSIST_AUDIT: audit.persist_audit_events,
        contracts.CLEANUP_EXPIRED: retention.cleanup_expired,
        contracts.SWEEP_ORPHANS: retention.sweep_orphans,
        contracts.MONITOR_RESOURCES: monitor.monitor_resources,
        contracts.ROTATE_KEYS: rotation.rotate_keys_step,  # bounded steps from a cursor (the CLI runs it all)
    }
    for name, function in jobs.items():
        task = app.tasks[name]
        assert isinstance(task, tasks.PeriodicJob) and task.job is function, name


@pytest.mark.unit
def test_beat_schedule_follows_the_settings() -> None:
    settings = Settings.from_env(
        {
            "REDIS_URL": "redis://127.0.0.1:1/0",
            "STRONGROOM_CLEANUP_INTERVAL": "120",
            "STRONGROOM_MONITOR_INTERVAL": "60",
        }
    )
    schedule = beat_schedule(settings)
    by_task = {entry["task"]: entry["schedule"] for entry in schedule.values()}
    assert by_task == {
        contracts.CLEANUP_EXPIRED: 120.0,
        contracts.SWEEP_ORPHANS: 120.0,
        contracts.MONITOR_RESOURCES: 60.0,
        contracts.ROTATE_KEYS: 86400.0,
        contracts.PERSIST_AUDIT: 5.0,
    }
    config = celery_settings(settings)
    assert config["task_serializer"] == "json" and config["beat_schedule"] == schedule


@pytest.mark.integration
def test_periodic_job_is_skipped_while_another_holds_its_lock(client: redis.Redis, monkeypatch: Any) -> None:
    calls: list[Any] = []

    class FakeServices:  # only .redis is used by run_exclusively; the job function gets the object back
        redis = client

    monkeypatch.setattr(tasks, "services", lambda: FakeServices)

    def job(services: Any) -> dict[str, int]:
        calls.append(services)
        return {"ok": 1}

    monitor = app.tasks[contracts.MONITOR_RESOURCES]
    monkeypatch.setattr(monitor, "job", job)
    assert monitor.run() == {"ok": 1}
    held = client.lock(layout.redis_job_lock(contracts.MONITOR_RESOURCES.rsplit(".", 1)[-1]), timeout=60)
    assert held.acquire(blocking=False)
    assert monitor.run() is None  # a duplicate beat is harmless
    held.release()
    assert len(calls) == 1


@pytest.mark.integration
def test_heartbeat_beats_and_leaves_on_stop(client: redis.Redis) -> None:
    beat = Heartbeat(client, "w1@host", interval=0.05)
    client.zadd(layout.REDIS_WORKERS, {"ancient@host": 1.0})
    beat.start()
    try:
        beat.beat()
        assert client.zscore(layout.REDIS_WORKERS, "w1@host") is not None
        assert client.zscore(layout.REDIS_WORKERS, "ancient@host") is None  # trimmed after a day
    finally:
        beat.stop()
    assert client.zscore(layout.REDIS_WORKERS, "w1@host") is None


@pytest.mark.integration
def test_the_cancel_task_cancels_through_the_shared_service_and_records_it(
    client: redis.Redis, monkeypatch: Any
) -> None:
    services = make_services(client)
    monkeypatch.setattr(tasks, "services", lambda: services)
    record = make_record(status="pending")
    services.records.create(record, {})
    task = app.tasks[contracts.CancelOperation.TASK]
    assert task.run(record.id, request_id="req-1", actor=record.grantee) == "cancelled"
    assert services.records.get(record.id).status == "cancelled"
    events = [decode(fields) for _, fields in client.xrange(layout.REDIS_AUDIT_STREAM)]
    assert [(e.action, e.result, e.operation_id, e.actor, e.request_id) for e in events] == [
        ("operation.cancel", "ok", record.id, record.grantee, "req-1")
    ]


@pytest.mark.integration
def test_heartbeat_reports_a_worker_that_cannot_sandbox_agents(client: redis.Redis) -> None:
    beat = Heartbeat(client, "w2@host", problem="bwrap: No permissions to create a new namespace")
    beat.beat()
    assert client.hget(layout.REDIS_WORKER_SANDBOX, "w2@host") == b"bwrap: No permissions to create a new namespace"
    beat.stop()
    assert client.hget(layout.REDIS_WORKER_SANDBOX, "w2@host") is None
