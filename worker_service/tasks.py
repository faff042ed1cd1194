"""Thin Celery tasks, registered under the versioned names in ``shared.contracts``.

Tasks take ids, validate them through the contract models, and call one pipeline function with the process's
``Services``. Every task derives from ``StrongroomTask`` (as warehouse's tasks derive from ``WarehouseTask``):
transient S3/Redis errors retry with exponential backoff (bounded), each retry and each final failure is logged
once, and a subclass adds what a failure must leave behind (an operation whose run task runs out of retries is
failed, so it does not sit in ``running`` until the monitor notices). Periodic jobs are registered by function
object (``periodic``), so the type checker sees what runs; each runs under a Redis lock, so a duplicate beat (or
an overlapping slow run) is a no-op.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import suppress
from typing import Any

import redis
import structlog
from celery import Task

from shared import contracts, layout
from shared.cancel import request_cancel
from shared.contracts import CancelOperation, RunOperation
from shared.errors import WorkerDiskFull
from shared.events import new_event, publish
from worker_service.celery_app import app, services
from worker_service.pipeline.audit import persist_audit_events
from worker_service.pipeline.monitor import monitor_idle, monitor_resources
from worker_service.pipeline.retention import cleanup_expired, sweep_orphans
from worker_service.pipeline.rotation import rotate_keys_step
from worker_service.pipeline.run import TRANSIENT_ERRORS, fail_operation, run_operation
from worker_service.services import Services

log = structlog.get_logger(__name__)

MAX_RETRIES = 5
STORAGE_GAVE_UP = "storage unavailable: the worker gave up after repeated S3/Redis errors"
DISK_FULL_GAVE_UP = "worker_disk_full: the workers' disk was full on every try; nothing was stored"


REDIS_WAIT = 300.0  # seconds a retry waits for Redis to come back before publishing anyway


def await_redis(client: redis.Redis, timeout: float = REDIS_WAIT) -> bool:
    """Wait (with backoff, bounded) until Redis answers PING; ``False`` if it never did.

    Celery publishes a retry with three quick tries; during an outage they all fail and the message is dropped
    (``Reject``), and kombu's reconnect attempts can leave the producer's channel broken for good. Waiting here
    first means the retry is published by a healthy connection, so the operation is re-run, not left ``running``.
    """
    deadline = time.monotonic() + timeout
    delay = 0.5
    while True:
        try:
            client.ping()
            return True
        except redis.RedisError:
            if time.monotonic() >= deadline:
                log.error("task.redis_still_down", waited=timeout)
                return False
        time.sleep(delay)
        delay = min(delay * 2, 5.0)


class StrongroomTask(Task):
    """The base of every strongroom task: bounded retries of transient errors, one log line per retry and per
    final failure, and the process's ``Services``.

    Celery reads the retry options from the class (``autoretry_for`` and friends), so no task repeats them.
    A subclass that must clean up after a final failure overrides ``on_failure`` and calls ``super()`` first.
    """

    autoretry_for = TRANSIENT_ERRORS
    max_retries = MAX_RETRIES
    retry_backoff = 2
    retry_backoff_max = 120
    retry_jitter = True

    @property
    def services(self) -> Services:
        return services()

    def retry(self, *args: Any, **kwargs: Any) -> Any:
        """A retry is a new message: publish it only once Redis answers again (see ``await_redis``)."""
        await_redis(self.services.redis)
        return super().retry(*args, **kwargs)

    def on_retry(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        log.warning("task.retry", task=self.name, error=type(exc).__name__, retries=self.request.retries)

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        log.error("task.failed", task=self.name, error=type(exc).__name__)


class RunOperationTask(StrongroomTask):
    """Fails the operation once its retries are exhausted (the message is acked then; nobody would run it).

    Every failed attempt released its run lease, so a lease still there belongs to a live run (a redelivered copy,
    possibly with this very task id): ``fail_operation`` leaves the operation to it.
    """

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        super().on_failure(exc, task_id, args, kwargs, einfo)
        operation_id = (kwargs or {}).get("operation_id", args[0] if args else None)
        if not isinstance(operation_id, str):
            return
        try:
            summary = DISK_FULL_GAVE_UP if isinstance(exc, WorkerDiskFull) else STORAGE_GAVE_UP
            fail_operation(self.services, operation_id, summary)
        except Exception:  # Redis or S3 still down: the monitor fails it after max_execution_time + grace
            log.exception("run.fail_after_retries_failed")


@app.task(name=RunOperation.TASK, bind=True, base=RunOperationTask, acks_late=True)
def run_operation_task(self: RunOperationTask, operation_id: str) -> str | None:
    message = RunOperation(operation_id=operation_id)
    final = run_operation(self.services, message.operation_id, token=self.request.id)
    return None if final is None else final.status


@app.task(name=CancelOperation.TASK, bind=True, base=StrongroomTask)
def cancel_operation_task(
    self: StrongroomTask, operation_id: str, request_id: str | None = None, actor: str | None = None
) -> str:
    message = CancelOperation(operation_id=operation_id, request_id=request_id, actor=actor)
    current = self.services
    record = request_cancel(current.records, current.redis, message.operation_id)
    event = new_event(
        operation_id=message.operation_id,
        actor=message.actor,
        action="operation.cancel",
        result="ok",
        request_id=message.request_id,
    )
    publish(current.redis, event)
    return record.status


@app.task(name=contracts.HEARTBEAT, bind=True, base=StrongroomTask)
def heartbeat_task(self: StrongroomTask) -> dict[str, Any]:
    """A round trip through the queue: proves a worker consumes tasks, not only that its process is alive."""
    return {"worker": self.request.hostname, "time": time.time()}


# --- periodic jobs (pipeline functions of the process's Services, each under a job lock) ------------------------

Job = Callable[[Services], Any]


Idle = Callable[[Any], bool]


def nothing_done(result: Any) -> bool:
    """The default test of an idle run: the job returned a count of zero (or nothing)."""
    return not result


def rotation_idle(report: Any) -> bool:
    """A rotation pass that re-encrypted nothing and has nothing left to do."""
    return isinstance(report, dict) and not report.get("rotated") and bool(report.get("complete"))


def run_exclusively(job: str, function: Job, lock_timeout: float, idle: Idle = nothing_done) -> Any:
    """Call ``function(services)`` unless another run of ``job`` holds the lock; ``None`` when skipped.

    A run that did something logs ``job.done`` at INFO; an idle one (``idle(result)``), or one skipped because
    another holds the lock, at DEBUG: the audit job runs every few seconds and must not flood the console.
    """
    current = services()
    lock = current.redis.lock(layout.redis_job_lock(job), timeout=lock_timeout, blocking=False)
    if not lock.acquire():
        log.debug("job.skipped", job=job, reason="another run holds the lock")
        return None
    try:
        result = function(current)
        (log.debug if idle(result) else log.info)("job.done", job=job, result=result)
        return result
    finally:
        with suppress(redis.RedisError):  # expired or Redis restarted: the lock times out by itself
            lock.release()


class PeriodicJob(StrongroomTask):
    """A periodic task: ``job(services)`` under the job's Redis lock, held at most ``lock_timeout`` seconds;
    ``idle(result)`` tells a run that did nothing (logged at DEBUG)."""

    job: Job
    lock_timeout: float
    idle: Idle


def periodic(name: str, function: Job, lock_timeout: float, idle: Idle = nothing_done) -> PeriodicJob:
    """Register ``function`` as the periodic task ``name`` (its interval is in ``schedule.beat_schedule``)."""

    def task(self: PeriodicJob) -> Any:
        return run_exclusively(self.name.rsplit(".", 1)[-1], self.job, self.lock_timeout, self.idle)

    task.__name__ = task.__qualname__ = name.rsplit(".", 1)[-1]
    task.__doc__ = function.__doc__
    # Extra options become class attributes of the task (staticmethod: plain functions, not methods).
    return app.task(
        name=name,
        bind=True,
        base=PeriodicJob,
        job=staticmethod(function),
        lock_timeout=lock_timeout,
        idle=staticmethod(idle),
    )(task)


persist_audit_task = periodic(contracts.PERSIST_AUDIT, persist_audit_events, 60)
cleanup_expired_task = periodic(contracts.CLEANUP_EXPIRED, cleanup_expired, 3600)
sweep_orphans_task = periodic(contracts.SWEEP_ORPHANS, sweep_orphans, 3600)
monitor_resources_task = periodic(contracts.MONITOR_RESOURCES, monitor_resources, 600, monitor_idle)
rotate_keys_task = periodic(contracts.ROTATE_KEYS, rotate_keys_step, 6 * 3600, rotation_idle)
