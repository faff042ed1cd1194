"""Periodic jobs that did nothing stay out of the console: ``job.done`` at DEBUG when idle, INFO otherwise."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from shared import contracts
from worker_service import tasks
from worker_service.celery_app import RoutineTaskLines, app
from worker_service.pipeline import monitor

pytestmark = pytest.mark.unit


class Lock:
    def __init__(self, free: bool) -> None:
        self.free = free

    def acquire(self) -> bool:
        return self.free

    def release(self) -> None:
        pass


class Redis:
    def __init__(self, free: bool = True) -> None:
        self.free = free

    def lock(self, *_: Any, **__: Any) -> Lock:
        return Lock(self.free)


class Recorder:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, Any]]] = []

    def __getattr__(self, level: str) -> Any:
        return lambda event, **fields: self.lines.append((level, event, fields))


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    recorder = Recorder()
    monkeypatch.setattr(tasks, "log", recorder)
    return recorder


def run(monkeypatch: pytest.MonkeyPatch, task_name: str, result: Any, *, free: bool = True) -> Any:
    class Services:
        redis = Redis(free)

    monkeypatch.setattr(tasks, "services", lambda: Services)
    task = app.tasks[task_name]
    monkeypatch.setattr(task, "job", lambda _services: result)
    return task.run()


IDLE = {
    contracts.PERSIST_AUDIT: 0,
    contracts.CLEANUP_EXPIRED: 0,
    contracts.SWEEP_ORPHANS: 0,
    contracts.MONITOR_RESOURCES: {
        "stored_bytes": 10, "failed_dead_runs": [], "overdue_pending": [], "redelivered": [],
        "operations_over_quota": [], "grantees_over_quota": [], "unreadable_records": 0, "workers_disk_full": 0,
        "workers_alive": 2, "operations": {"succeeded": 1},
    },
    contracts.ROTATE_KEYS: {
        "primary": "k2", "scanned": 4, "current": 4, "rotated": {}, "remaining": {}, "unreadable": 0, "complete": True,
    },
}  # fmt: skip
BUSY = {
    contracts.PERSIST_AUDIT: 3,
    contracts.CLEANUP_EXPIRED: 1,
    contracts.SWEEP_ORPHANS: 2,
    contracts.MONITOR_RESOURCES: {**IDLE[contracts.MONITOR_RESOURCES], "redelivered": ["op"]},
    contracts.ROTATE_KEYS: {**IDLE[contracts.ROTATE_KEYS], "rotated": {"k1": 2}},
}


@pytest.mark.parametrize("name", sorted(IDLE))
def test_an_idle_run_logs_at_debug(name: str, recorder: Recorder, monkeypatch: pytest.MonkeyPatch) -> None:
    assert run(monkeypatch, name, IDLE[name]) == IDLE[name]
    assert [(level, event) for level, event, _ in recorder.lines] == [("debug", "job.done")]


@pytest.mark.parametrize("name", sorted(BUSY))
def test_a_run_that_did_something_logs_at_info(name: str, recorder: Recorder, monkeypatch: pytest.MonkeyPatch) -> None:
    run(monkeypatch, name, BUSY[name])
    assert [(level, event) for level, event, _ in recorder.lines] == [("info", "job.done")]
    assert recorder.lines[0][2]["result"] == BUSY[name]


@pytest.mark.parametrize("finding", monitor.FINDINGS)
def test_a_monitor_pass_with_any_finding_logs_at_info(
    finding: str, recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each thing the monitor acts on or alerts about (a worker's full disk too) makes its pass worth a line."""
    value = ["op"] if finding in monitor.FOUND_IDS else 1
    run(monkeypatch, contracts.MONITOR_RESOURCES, {**IDLE[contracts.MONITOR_RESOURCES], finding: value})
    assert recorder.lines[0][0] == "info"


def test_an_incomplete_rotation_is_not_idle(recorder: Recorder, monkeypatch: pytest.MonkeyPatch) -> None:
    run(monkeypatch, contracts.ROTATE_KEYS, {**IDLE[contracts.ROTATE_KEYS], "remaining": {"k1": 1}, "complete": False})
    assert recorder.lines[0][0] == "info"


def test_a_run_skipped_for_the_lock_logs_at_debug(recorder: Recorder, monkeypatch: pytest.MonkeyPatch) -> None:
    assert run(monkeypatch, contracts.PERSIST_AUDIT, 5, free=False) is None
    assert [(level, event) for level, event, _ in recorder.lines] == [("debug", "job.skipped")]


def celery_record(logger: str, msg: str, args: Any) -> logging.LogRecord:
    """As Celery logs: ``info(msg, {...})`` (the record's args become the mapping) or ``info(msg, a, b)``."""
    packed = (args,) if isinstance(args, dict) else args
    return logging.getLogger(logger).makeRecord(logger, logging.INFO, __file__, 1, msg, packed, None)


@pytest.mark.parametrize(
    ("logger", "msg", "args"),
    [
        ("celery.beat", "Scheduler: Sending due task %s (%s)", ("persist_audit_events", contracts.PERSIST_AUDIT)),
        ("celery.worker.strategy", "Task %(name)s[%(id)s] received", {"name": contracts.PERSIST_AUDIT, "id": "1"}),
        ("celery.app.trace", "Task %(name)s[%(id)s] succeeded", {"name": contracts.MONITOR_RESOURCES, "id": "1"}),
    ],
)
def test_celery_lines_about_a_routine_task_are_debug(logger: str, msg: str, args: Any) -> None:
    target = logging.getLogger(logger)
    target.setLevel(logging.INFO)
    try:
        record = celery_record(logger, msg, args)
        assert RoutineTaskLines(target).filter(record) is False  # DEBUG is off: dropped
        target.setLevel(logging.DEBUG)
        record = celery_record(logger, msg, args)
        assert RoutineTaskLines(target).filter(record) is True and record.levelname == "DEBUG"
    finally:
        target.setLevel(logging.NOTSET)


def test_celery_lines_about_an_operation_stay_info() -> None:
    target = logging.getLogger("celery.app.trace")
    record = celery_record("celery.app.trace", "Task %(name)s succeeded", {"name": contracts.RunOperation.TASK})
    assert RoutineTaskLines(target).filter(record) is True and record.levelno == logging.INFO
