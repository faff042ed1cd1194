"""The operation lifecycle on the worker: claim, run the agent, store artifacts, write the record once.

Concurrency contract (shared with the API, see shared/records.py):

* Only a ``pending`` record starts (-> ``running``), under the per-operation lock, so a redelivered or cancelled
  task is a no-op. Each claim holds a lease in Redis (``pipeline/lease.py``) naming its token (the Celery task id)
  and a fresh run id, and refreshes it with a compare-and-set from claim to record write (agent, uploads,
  finish); a ``running`` record whose lease is gone belongs to a dead (or cut-off) worker and is re-claimed.
* A claim proceeds only when nobody holds the lease. A holder, even one with this task's id (the broker handed a
  live task out again), is watched until it lapses (dead: claim) or is refreshed (alive: no-op). An attempt that
  fails transiently releases its lease before Celery retries, so the retry claims at once.
* A run uploads under its own keys (``layout.artifact_key(..., run_id)``) and checks it still holds the lease
  before each upload, so two runs of one operation never overwrite each other, and a run that lost its lease
  stops uploading and never writes the record. The record is written once at the end, naming all artifacts
  (metadata last), only by the lease holder, right after a compare-and-set proved and extended the lease.
* Nothing here deletes unnamed objects: a record PUT can land late (a worker stalled past every TTL after its
  check) and name the objects of a run that lost, so only the orphan sweep removes them (age-gated, skipping live
  leases, re-reading the record under the lock). A crash at any point leaves the record naming all artifacts or
  none.
* Cancel (``shared.cancel``): the Redis cancel key and ``cancel_requested`` are set; the agent's process group is
  killed within a poll interval and the record ends ``cancelled`` with no artifacts.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import time
import uuid
from dataclasses import dataclass, field
from typing import Literal

import redis
import structlog

from shared import layout
from shared.cancel import CANCELLED_SUMMARY
from shared.errors import (
    GrantDenied,
    QuotaExceeded,
    StorageError,
    Unavailable,
    ValidationFailed,
    WorkerDiskFull,
)
from shared.events import new_event, publish
from shared.grants import standing
from shared.models import OperationRecord, OperationResult, OperationStatus, StoredArtifact, utcnow
from worker_service.agents.inputs import write_input
from worker_service.agents.outputs import LimitExceeded, collect_outputs
from worker_service.agents.registry import resolve
from worker_service.agents.runner import AgentRun, Limits, run_agent
from worker_service.agents.sandbox import SandboxPolicy, SandboxUnavailable
from worker_service.agents.workdir import fresh_workdir
from worker_service.pipeline.lease import POLL_INTERVAL, LeaseLost, RunLease, RunProbe, await_lapse
from worker_service.pipeline.store import publish_stored, store_artifacts
from worker_service.services import Services

log = structlog.get_logger(__name__)

INTERNAL_SUMMARY = "internal error: the worker could not complete the operation"
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
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
    charged: int = 0  # stored bytes counted against the grantee's quota for these artifacts


# --- the record -----------------------------------------------------------------------------------------------------


def persist(services: Services, record: OperationRecord) -> None:
    """Write the record with its new status (the write also wakes the API requests long-polling the operation:
    ``shared.status_feed``)."""
    services.records.put(record)


# --- claim ----------------------------------------------------------------------------------------------------------


def claim(services: Services, operation_id: str, token: str) -> tuple[OperationRecord, RunLease] | None:
    """Move the record to ``running`` and take a fresh lease; ``None`` when there is nothing to do.

    Only where no lease exists: another holder (whatever its task id) is waited out if dead and left alone if
    alive. Leftovers of earlier runs stay where they are (see the module docstring).
    """
    for attempt in range(2):
        outcome = _claim_once(services, operation_id, token)
        if outcome != "held":
            return outcome
        if attempt or not await_lapse(services.redis, operation_id):
            log.info("run.skipped", reason="a live run holds the lease")
            return None
    return None


def _claim_once(
    services: Services, operation_id: str, token: str
) -> tuple[OperationRecord, RunLease] | Literal["held"] | None:
    """One claim under the lock: the claimed record, ``"held"`` while a lease exists, ``None`` if finished."""
    records = services.records
    lease = RunLease.new(services.redis, operation_id, token)
    with records.locked(operation_id):
        record = records.get(operation_id)
        if record.status not in ("pending", "running"):
            log.info("run.skipped", reason=f"status {record.status}")
            return None
        if not lease.take():
            return "held"
        try:
            if record.status == "running":
                log.warning("run.reclaimed")
            record = record.evolve(status="running", started_at=utcnow(), finished_at=None, result=None, artifacts=[])
            persist(services, record)
        except BaseException:
            _release_quietly(lease)
            raise
    publish(services.redis, new_event(operation_id=operation_id, action="operation.started", result="ok"))
    return record, lease


def _release_quietly(lease: RunLease) -> None:
    """Give the lease up for a retry; if Redis is down it lapses within ``LEASE_TTL`` by itself."""
    try:
        lease.release()
    except redis.RedisError as exc:
        log.warning("run.lease_release_failed", error=type(exc).__name__)


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
    policy = SandboxPolicy.from_settings(settings)
    with fresh_workdir(settings.work_dir) as workdir:
        try:
            write_input(workdir, agent_input)
        except ValidationFailed as exc:
            return Verdict("failed", f"invalid input: {exc.detail}")
        try:
            run = run_agent(
                agent.argv(workdir, agent_input),
                workdir,
                limits,
                should_stop=probe,
                poll_interval=POLL_INTERVAL,
                policy=policy,
                mounts=agent.mounts,
            )
        except SandboxUnavailable as exc:
            return Verdict("failed", f"agent sandbox unavailable: {exc.detail}")
        if probe.lease_lost:
            raise LeaseLost("lost the run lease while the agent ran")
        try:
            outputs = collect_outputs(workdir.out_dir, limits)
            out_problem = None
        except LimitExceeded as exc:
            outputs, out_problem = [], exc
        failed = judge(run, limits, out_problem)
        if failed is not None:
            return failed
        if out_problem is not None:
            return Verdict("failed", out_problem.detail, run.logs)
        probe.ensure_owner()
        charged = sum(output.size for output in outputs)
        refused = charge_stored_bytes(services, record, charged)
        if refused is not None:
            return Verdict("failed", refused, run.logs)
        try:
            artifacts = store_artifacts(
                services,
                record,
                workdir.out_dir,
                run_id=probe.lease.run_id,
                ensure_owner=probe.ensure_owner,
            )
            if probe.lease_lost:
                raise LeaseLost("lost the run lease while storing artifacts")
        except LimitExceeded as exc:
            credit_stored_bytes(services, record, charged)
            return Verdict("failed", exc.detail, run.logs)
        except BaseException:
            credit_stored_bytes(services, record, charged)
            raise
        summary = run.reported_summary or f"agent finished: {len(artifacts)} artifact(s)"
        return Verdict("succeeded", summary, run.logs, artifacts, charged)


def charge_stored_bytes(services: Services, record: OperationRecord, amount: int) -> str | None:
    """Count ``amount`` bytes against the grantee's quota before anything is uploaded; the refusal, if any.

    The grant is read again here: one revoked or expired while the agent ran stores nothing.
    """
    try:
        grant = standing(services.grants, record.grantee, utcnow())
    except GrantDenied as exc:
        return f"{exc.code}: {exc.detail}"
    if services.quotas is None:
        return None
    try:
        services.quotas.charge(record.grantee, amount, grant.quotas, utcnow())
    except QuotaExceeded as exc:
        return f"{exc.code}: {exc.detail}"
    return None


def credit_stored_bytes(services: Services, record: OperationRecord, amount: int) -> None:
    if services.quotas is not None:
        services.quotas.credit(record.grantee, amount)


# --- finishing ------------------------------------------------------------------------------------------------------


def finish(services: Services, probe: RunProbe, verdict: Verdict, execution_time: float) -> OperationRecord | None:
    """Write the record once (status, result, artifacts) while this run owns the lease; ``None`` if superseded.

    Ownership is proved by a compare-and-set that also extends the lease to a full TTL, under the operation lock,
    right before the PUT (the keep-alive thread goes on refreshing during it). A lost lease raises ``LeaseLost``
    for a success (the task retries and runs again); any other verdict may still be written when nobody holds the
    lease, by taking it first.
    """
    records, lease = services.records, probe.lease
    operation_id = lease.operation_id
    with records.locked(operation_id):
        current = records.get(operation_id)
        if current.status != "running":
            log.warning("run.superseded", status=current.status)
            return None
        if not probe.confirm_owner():
            if verdict.status == "succeeded":
                raise LeaseLost("the run lease lapsed before the record was written")
            if not lease.take():
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
        persist(services, final)
        probe.release()
        services.redis.delete(layout.redis_cancel_key(operation_id))
    return final


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

    Transient storage/Redis errors release the lease and propagate (the task retries with the same token and
    claims again); any other failure ends the operation ``failed`` with a generic summary and the details in the
    worker log.
    """
    token = token or uuid.uuid4().hex
    started = time.monotonic()
    claimed = claim(services, operation_id, token)
    if claimed is None:
        return None
    record, lease = claimed
    if services.quotas is not None:
        services.quotas.started(record.grantee, record.id, utcnow())
    probe = RunProbe(lease)
    verdict: Verdict | None = None
    try:
        with probe.kept_alive():
            verdict = _verdict(services, record, probe)
            final = finish(services, probe, verdict, time.monotonic() - started)
    except TRANSIENT_ERRORS:
        if verdict is not None:
            credit_stored_bytes(services, record, verdict.charged)  # the retry charges again
        _release_quietly(lease)
        raise
    if verdict.charged and (final is None or final.status != "succeeded"):
        credit_stored_bytes(services, record, verdict.charged)  # the artifacts were not kept
    if final is not None and services.quotas is not None:
        services.quotas.finished(record.grantee, record.id)
    if final is not None:
        _announce(services, final)
        log.info("run.finished", status=final.status, artifacts=len(final.artifacts))
    return final


def _verdict(services: Services, record: OperationRecord, probe: RunProbe) -> Verdict:
    """``execute``, with every unexpected (non-transient) exception turned into a generic failure."""
    try:
        return execute(services, record, probe)
    except TRANSIENT_ERRORS:
        raise
    except OSError as exc:
        if exc.errno not in DISK_FULL_ERRNOS:
            log.exception("run.failed_internally")
            return Verdict("failed", INTERNAL_SUMMARY)
        raise _disk_full(services, exc) from exc
    except Exception:
        log.exception("run.failed_internally")
        return Verdict("failed", INTERNAL_SUMMARY)


def _disk_full(services: Services, exc: OSError) -> WorkerDiskFull:
    """Alert now (a log line) and leave a mark for the resource monitor; the run directory is already gone, so
    the retry (here or on another worker) starts with the space this run had taken back."""
    worker = f"{socket.gethostname()}:{os.getpid()}"
    log.error("worker_disk_full", alert="worker_disk_full", worker=worker, error=errno.errorcode.get(exc.errno or 0))
    try:
        services.redis.zadd(layout.REDIS_WORKER_DISK_FULL, {worker: time.time()})
    except redis.RedisError as redis_exc:
        log.warning("worker_disk_full.not_recorded", error=type(redis_exc).__name__)
    return WorkerDiskFull(f"the worker's disk is full ({services.settings.work_dir or 'system temp'})")


def fail_operation(services: Services, operation_id: str, summary: str) -> OperationRecord | None:
    """End an unfinished operation as ``failed`` once its run task ran out of retries.

    Only when nobody holds the run lease: each failed attempt released its own before retrying, so a lease now
    belongs to a live run (another delivery, perhaps of the same task id), and failing the operation would throw
    its work away. Returns ``None`` then; the record unchanged once it is finished. Leftover uploads are the orphan
    sweep's.
    """
    records = services.records
    with records.locked(operation_id):
        current = records.get(operation_id)
        if current.finished:
            return current
        if services.redis.exists(layout.redis_run_lease(operation_id)):
            log.warning("run.fail_skipped", reason="a run holds the lease")
            return None
        result = OperationResult(status="error", summary=summary, execution_time=0)
        final = current.evolve(status="failed", finished_at=utcnow(), result=result, artifacts=[])
        persist(services, final)
    if services.quotas is not None:
        services.quotas.finished(final.grantee, final.id)
    return final
