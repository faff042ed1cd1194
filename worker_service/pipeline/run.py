"""The operation lifecycle on the worker: claim, run the agent, store artifacts, write the record once.

Concurrency contract (shared with the API, see shared/records.py):

* Only a ``pending`` record starts (-> ``running``), under the per-operation lock, so a redelivered or cancelled
  task is a no-op. The run holds a lease in Redis (``layout.redis_run_lease``) naming its token (the Celery task
  id) and refreshes it while the agent runs; a ``running`` record whose lease is gone belongs to a dead worker and
  is re-claimed: its uploaded-but-unnamed objects are deleted and the agent runs again.
* Artifacts are uploaded first; the record is written once at the end, naming them all (metadata last). A crash
  at any point leaves the record naming all artifacts or none, and the leftovers are unnamed objects that the
  next claim (or the orphan sweep) deletes.
* Cancel: the API sets ``cancel_requested`` and the Redis cancel key; the agent's process group is killed within
  a poll interval and the record ends ``cancelled`` with no artifacts.
"""

from __future__ import annotations

import signal
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import redis
import structlog

from shared import layout
from shared.errors import Conflict, StorageError, Unavailable, ValidationFailed
from shared.events import new_event, publish
from shared.models import OperationRecord, OperationResult, OperationStatus, StoredArtifact, utcnow
from worker_service.agents.inputs import write_input
from worker_service.agents.outputs import LimitExceeded, collect_outputs
from worker_service.agents.registry import resolve
from worker_service.agents.runner import AgentRun, Limits, fresh_workdir, run_agent
from worker_service.pipeline.store import publish_stored, store_artifacts, unnamed_objects
from worker_service.services import Services

log = structlog.get_logger(__name__)

LEASE_TTL = 30  # seconds; a run that stops refreshing for this long is presumed dead
LEASE_REFRESH = 5.0
POLL_INTERVAL = 0.5
CANCEL_TTL = 24 * 3600
CANCELLED_SUMMARY = "cancelled by grantee"
INTERNAL_SUMMARY = "internal error: the worker could not complete the operation"
# Worth a retry of the whole task (it re-claims with the same token): S3 or Redis trouble, or a lost lease.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    Unavailable,
    StorageError,
    redis.ConnectionError,
    redis.TimeoutError,
)


@dataclass
class Verdict:
    """How a run ended, before it is written: the record's status and result fields."""

    status: OperationStatus
    summary: str
    logs: list[str] = field(default_factory=list)
    artifacts: list[StoredArtifact] = field(default_factory=list)


class LeaseLost(Unavailable):
    """Another worker may own the run now (Redis was unreachable longer than the lease): stop, write nothing."""

    code = "run_lease_lost"


# --- lease and cancel probe ---------------------------------------------------------------------------------------


class RunProbe:
    """Called by the runner's watchdog: keeps the lease fresh and reports a cancel request.

    Redis hiccups do not kill the agent; only a lease that could not be refreshed for most of its TTL does
    (``lease_lost``), because by then another worker may legitimately re-claim the operation.
    """

    def __init__(self, client: redis.Redis, operation_id: str, token: str) -> None:
        self.client = client
        self.operation_id = operation_id
        self.token = token
        self.lease_lost = False
        self._last_refresh = self._last_ok = time.monotonic()

    def __call__(self) -> bool:
        now = time.monotonic()
        try:
            if now - self._last_refresh >= LEASE_REFRESH:
                self.client.set(layout.redis_run_lease(self.operation_id), self.token, ex=LEASE_TTL)
                self._last_refresh = now
            cancelled = bool(self.client.exists(layout.redis_cancel_key(self.operation_id)))
            self._last_ok = now
            return cancelled
        except redis.RedisError as exc:
            log.warning("run.probe_failed", error=type(exc).__name__)
            if now - self._last_ok > LEASE_TTL * 0.8:
                self.lease_lost = True
                return True
            return False

    @contextmanager
    def kept_alive(self) -> Iterator[None]:
        """Keep refreshing the lease from a thread while the caller works with no watchdog (the uploads), so a
        long upload is never mistaken for a dead worker and re-claimed under its feet."""
        stop = threading.Event()

        def refresh() -> None:
            while not stop.wait(POLL_INTERVAL):
                self()

        thread = threading.Thread(target=refresh, name=f"lease-{self.operation_id}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=LEASE_REFRESH)

    def owns_lease(self) -> bool:
        holder = self.client.get(layout.redis_run_lease(self.operation_id))
        return holder is not None and _text(holder) == self.token


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


# --- claim ----------------------------------------------------------------------------------------------------------


def claim(services: Services, operation_id: str, token: str) -> OperationRecord | None:
    """Move the record to ``running`` and take the lease; ``None`` when there is nothing to do."""
    records, client = services.records, services.redis
    with records.locked(operation_id):
        record = records.get(operation_id)
        if record.status == "running":
            holder = client.get(layout.redis_run_lease(operation_id))
            if holder is not None and _text(holder) != token:
                log.info("run.skipped", reason="running elsewhere")
                return None
            leftovers = unnamed_objects(services, record)
            services.store.delete_many(leftovers)
            log.warning("run.reclaimed", removed_objects=len(leftovers))
        elif record.status != "pending":
            log.info("run.skipped", reason=f"status {record.status}")
            return None
        client.set(layout.redis_run_lease(operation_id), token, ex=LEASE_TTL)
        record = record.evolve(status="running", started_at=utcnow(), finished_at=None, result=None, artifacts=[])
        records.put(record)
    publish(services.redis, new_event(operation_id=operation_id, action="operation.started", result="ok"))
    return record


# --- judging a run --------------------------------------------------------------------------------------------------


def judge(run: AgentRun, limits: Limits, out_dir_check: LimitExceeded | None = None) -> Verdict | None:
    """The failure verdict for a run, or ``None`` when its outputs may be stored."""
    logs = run.logs
    if run.outcome == "cancelled":
        return Verdict("cancelled", CANCELLED_SUMMARY, logs)
    if run.outcome == "timeout":
        return Verdict("failed", f"time limit exceeded: ran longer than {limits.max_execution_time:g} s", logs)
    if run.outcome == "disk":
        return Verdict(
            "failed",
            f"disk limit exceeded: working directory used {run.disk_usage} bytes, max {limits.max_disk_usage}",
            logs,
        )
    code = run.exit_code or 0
    if code == -signal.SIGXCPU:
        return Verdict("failed", f"time limit exceeded: used more than {limits.max_execution_time:g} s of CPU", logs)
    if out_dir_check is not None and code != 0:
        return Verdict("failed", out_dir_check.detail, logs)  # e.g. EFBIG: the limit explains the crash
    if code == -signal.SIGXFSZ:
        return Verdict("failed", f"artifact size limit exceeded: max {limits.max_artifact_size} bytes", logs)
    reported = run.reported_summary
    if code < 0:
        return Verdict("failed", f"agent killed by {signal.Signals(-code).name}", logs)
    if code > 0:
        return Verdict("failed", f"agent failed (exit status {code})" + (f": {reported}" if reported else ""), logs)
    if run.reported_status == "error":
        return Verdict("failed", f"agent reported an error: {reported or 'no summary'}", logs)
    return None


# --- execution ------------------------------------------------------------------------------------------------------


def execute(services: Services, record: OperationRecord, probe: RunProbe) -> Verdict:
    """Run the agent and upload its outputs; every expected failure becomes a verdict, not an exception."""
    settings = services.settings
    limits = Limits.from_settings(settings)
    try:
        agent = resolve(settings, record.agent)
    except ValidationFailed as exc:
        return Verdict("failed", exc.detail)
    agent_input = services.records.read_input(record.id)
    with fresh_workdir(settings.work_dir) as workdir:
        try:
            write_input(workdir, agent_input)
        except ValidationFailed as exc:
            return Verdict("failed", f"invalid input: {exc.detail}")
        run = run_agent(
            agent.argv(workdir, agent_input), workdir, limits, should_stop=probe, poll_interval=POLL_INTERVAL
        )
        if probe.lease_lost:
            raise LeaseLost("lost the run lease while the agent ran")
        try:
            collect_outputs(workdir.out_dir, limits)
            out_problem = None
        except LimitExceeded as exc:
            out_problem = exc
        failed = judge(run, limits, out_problem)
        if failed is not None:
            return failed
        if out_problem is not None:
            return Verdict("failed", out_problem.detail, run.logs)
        if not probe.owns_lease():
            raise LeaseLost("lost the run lease before storing artifacts")
        try:
            with probe.kept_alive():
                artifacts = store_artifacts(services, record, workdir.out_dir, scratch=workdir.root)
        except LimitExceeded as exc:
            return Verdict("failed", exc.detail, run.logs)
        if probe.lease_lost:
            raise LeaseLost("lost the run lease while storing artifacts")
        summary = run.reported_summary or f"agent finished: {len(artifacts)} artifact(s)"
        return Verdict("succeeded", summary, run.logs, artifacts)


# --- finishing ------------------------------------------------------------------------------------------------------


def finish(
    services: Services, operation_id: str, token: str, verdict: Verdict, execution_time: float
) -> OperationRecord | None:
    """Write the record once (status, result, artifacts) if this run still owns it; then drop leftovers."""
    records, client = services.records, services.redis
    with records.locked(operation_id):
        current = records.get(operation_id)
        holder = client.get(layout.redis_run_lease(operation_id))
        if current.status != "running" or (holder is not None and _text(holder) != token):
            log.warning("run.superseded", status=current.status)
            return None
        if current.cancel_requested and verdict.status != "cancelled":
            verdict = Verdict("cancelled", CANCELLED_SUMMARY, verdict.logs)
        ok = verdict.status == "succeeded"
        result = OperationResult(
            status="ok" if ok else "error",
            summary=verdict.summary,
            execution_time=round(execution_time, 3),
            logs=verdict.logs,
        )
        final = current.evolve(
            status=verdict.status, finished_at=utcnow(), result=result, artifacts=verdict.artifacts if ok else []
        )
        records.put(final)
        client.delete(layout.redis_run_lease(operation_id), layout.redis_cancel_key(operation_id))
    _drop_unnamed(services, final)
    return final


def _drop_unnamed(services: Services, record: OperationRecord) -> None:
    try:
        services.store.delete_many(unnamed_objects(services, record))
    except Unavailable:
        log.warning("run.cleanup_deferred")  # invisible leftovers: the orphan sweep removes them


def _announce(services: Services, record: OperationRecord) -> None:
    publish_stored(services, record)
    publish(
        services.redis,
        new_event(
            operation_id=record.id,
            action="operation.finished",
            result="ok" if record.status == "succeeded" else "error",
            reason=record.status if record.result is None else f"{record.status}: {record.result.summary}"[:500],
        ),
    )


# --- entry points ---------------------------------------------------------------------------------------------------


def run_operation(services: Services, operation_id: str, token: str | None = None) -> OperationRecord | None:
    """Run one operation to its end state; idempotent (a repeat after the end is a no-op returning ``None``).

    Transient storage/Redis errors propagate (the task retries with the same token and re-claims); any other
    failure ends the operation ``failed`` with a generic summary and the details in the worker log.
    """
    token = token or uuid.uuid4().hex
    started = time.monotonic()
    record = claim(services, operation_id, token)
    if record is None:
        return None
    probe = RunProbe(services.redis, operation_id, token)
    try:
        verdict = execute(services, record, probe)
    except TRANSIENT_ERRORS:
        raise
    except Exception:
        log.exception("run.failed_internally")
        verdict = Verdict("failed", INTERNAL_SUMMARY)
    final = finish(services, operation_id, token, verdict, time.monotonic() - started)
    if final is not None:
        _announce(services, final)
        log.info("run.finished", status=final.status, artifacts=len(final.artifacts))
    return final


def fail_operation(services: Services, operation_id: str, summary: str) -> OperationRecord:
    """End a still-running operation as ``failed`` (a task that ran out of retries); no-op once finished."""

    def change(current: OperationRecord) -> OperationRecord:
        if current.finished:
            return current
        result = OperationResult(status="error", summary=summary, execution_time=0)
        return current.evolve(status="failed", finished_at=utcnow(), result=result, artifacts=[])

    final = services.records.update(operation_id, change)
    services.redis.delete(layout.redis_run_lease(operation_id))
    _drop_unnamed(services, final)
    return final


def request_cancel(
    services: Services, operation_id: str, *, actor: str | None = None, request_id: str | None = None
) -> OperationRecord:
    """The agreed cancel semantics: pending -> cancelled, running -> flagged (the run stops it), finished -> 409."""

    def change(current: OperationRecord) -> OperationRecord:
        if current.finished:
            raise Conflict(f"operation is already {current.status}", code="operation_finished")
        if current.status == "pending":
            result = OperationResult(status="error", summary=CANCELLED_SUMMARY, execution_time=0)
            return current.evolve(status="cancelled", finished_at=utcnow(), result=result)
        services.redis.set(layout.redis_cancel_key(operation_id), "1", ex=CANCEL_TTL)
        return current.evolve(cancel_requested=True)

    record = services.records.update(operation_id, change)
    publish(
        services.redis,
        new_event(
            operation_id=operation_id, actor=actor, action="operation.cancel", result="ok", request_id=request_id
        ),
    )
    return record
