"""Thin Celery tasks, registered under the versioned names in ``shared.contracts``.

Tasks take ids, validate them through the contract models, and call one pipeline function with the process's
``Services``. Transient S3/Redis errors retry with exponential backoff (bounded); an operation whose run task
runs out of retries is failed so it does not sit in ``running`` until the monitor notices. Periodic jobs run
under a Redis lock so a duplicate beat (or an overlapping slow run) is a no-op.
"""

from __future__ import annotations

import importlib
import time
from contextlib import suppress
from typing import Any

import redis
import structlog
from celery import Task

from shared import contracts, layout
from shared.cancel import request_cancel
from shared.contracts import CancelOperation, RunOperation
from shared.events import new_event, publish
from worker_service.celery_app import app, services
from worker_service.pipeline.run import TRANSIENT_ERRORS, fail_operation, run_operation

log = structlog.get_logger(__name__)

MAX_RETRIES = 5
RETRY_OPTIONS: dict[str, Any] = {
    "autoretry_for": TRANSIENT_ERRORS,
    "max_retries": MAX_RETRIES,
    "retry_backoff": 2,
    "retry_backoff_max": 120,
    "retry_jitter": True,
}
STORAGE_GAVE_UP = "storage unavailable: the worker gave up after repeated S3/Redis errors"


class RunOperationTask(Task):
    """Fails the operation once its retries are exhausted (the message is acked then; nobody would run it).

    Every failed attempt released its run lease, so a lease still there belongs to a live run (a redelivered copy,
    possibly with this very task id): ``fail_operation`` leaves the operation to it.
    """

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        operation_id = (kwargs or {}).get("operation_id", args[0] if args else None)
        if not isinstance(operation_id, str):
            return
        try:
            fail_operation(services(), operation_id, STORAGE_GAVE_UP)
        except Exception:  # Redis or S3 still down: the monitor fails it after max_execution_time + grace
            log.exception("run.fail_after_retries_failed")


@app.task(name=RunOperation.TASK, bind=True, base=RunOperationTask, acks_late=True, **RETRY_OPTIONS)
def run_operation_task(self: Task, operation_id: str) -> str | None:
    message = RunOperation(operation_id=operation_id)
    final = run_operation(services(), message.operation_id, token=self.request.id)
    return None if final is None else final.status


@app.task(name=CancelOperation.TASK, **RETRY_OPTIONS)
def cancel_operation_task(operation_id: str, request_id: str | None = None, actor: str | None = None) -> str:
    message = CancelOperation(operation_id=operation_id, request_id=request_id, actor=actor)
    current = services()
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


@app.task(name=contracts.HEARTBEAT, bind=True)
def heartbeat_task(self: Task) -> dict[str, Any]:
    """A round trip through the queue: proves a worker consumes tasks, not only that its process is alive."""
    return {"worker": self.request.hostname, "time": time.time()}


# --- periodic jobs (worker B's pipeline functions, each under a job lock) ---------------------------------------


def run_exclusively(job: str, target: str, lock_timeout: float) -> Any:
    """Call ``module:function(services)`` unless another run of ``job`` holds the lock; ``None`` when skipped."""
    module_name, function_name = target.split(":")
    function = getattr(importlib.import_module(module_name), function_name)
    current = services()
    lock = current.redis.lock(layout.redis_job_lock(job), timeout=lock_timeout, blocking=False)
    if not lock.acquire():
        log.info("job.skipped", job=job, reason="another run holds the lock")
        return None
    try:
        result = function(current)
        log.info("job.done", job=job, result=result)
        return result
    finally:
        with suppress(redis.RedisError):  # expired or Redis restarted: the lock times out by itself
            lock.release()


def _periodic(name: str, target: str, lock_timeout: float) -> None:
    job = name.rsplit(".", 1)[-1]

    def task() -> Any:
        return run_exclusively(job, target, lock_timeout)

    task.__name__ = task.__qualname__ = job
    app.task(name=name, **RETRY_OPTIONS)(task)


_periodic(contracts.PERSIST_AUDIT, "worker_service.pipeline.audit:persist_audit_events", 60)
_periodic(contracts.CLEANUP_EXPIRED, "worker_service.pipeline.retention:cleanup_expired", 3600)
_periodic(contracts.SWEEP_ORPHANS, "worker_service.pipeline.retention:sweep_orphans", 3600)
_periodic(contracts.MONITOR_RESOURCES, "worker_service.pipeline.monitor:monitor_resources", 600)
_periodic(contracts.ROTATE_KEYS, "worker_service.pipeline.rotation:rotate_keys", 6 * 3600)
