"""Resource monitor: fail runs whose worker died, compare stored bytes with quotas, publish alerts and metrics.

A run message can be lost (Redis restarted without persistence, a worker killed with ``kill -9`` leaves its message
unacknowledged until the broker's visibility timeout): a ``pending`` operation older than ``REDELIVER_AFTER``, or a
``running`` one whose lease has lapsed for that long, gets its run task sent again, at most once per interval. The
run task only starts a pending record or re-claims a lease-less one, so a duplicate is harmless.

A run is dead when its record says ``running``, it started more than ``max_execution_time`` + ``grace`` ago, and
nobody holds its run lease (the running worker refreshes ``redis_run_lease`` every few seconds). It is failed
under the operation lock after re-checking both, so a worker that just finished wins. A run whose grantee asked to
cancel becomes ``cancelled`` instead.

Every finding is a structured log line with ``alert=<kind>`` (what an alerting pipeline matches on). Figures go to
Redis as one snapshot (``REDIS_MONITOR_SNAPSHOT``) that ``WorkerMetricsCollector`` turns into Prometheus gauges
at scrape time, so whichever process serves ``/metrics`` (``start_metrics_server`` in the worker's main process)
shows the latest run of the job, whichever pool process ran it. Labels never carry addresses or operation ids.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import redis
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from shared import layout
from shared.contracts import RunOperation
from shared.errors import NotFound, StrongroomError
from shared.events import new_event, publish
from shared.logging import get_logger
from shared.models import OperationRecord, OperationResult, format_time
from worker_service.pipeline.retention import objects_by_operation
from worker_service.services import Services

log = get_logger(__name__)

REDELIVER_AFTER = 120  # seconds before a pending or lease-less operation's run task is sent again
STUCK_GRACE = 300  # seconds past max_execution_time before a lease-less run is declared dead
WORKER_ALIVE_WINDOW = 120  # a worker whose heartbeat is older than this is counted as gone
DISK_FULL_WINDOW = 600  # seconds: a full disk reported this recently is alerted on (at least one monitor interval)
STALE_DISK_FULL = 24 * 3600  # entries older than this are dropped
SNAPSHOT_TTL_INTERVALS = 3  # the snapshot outlives a few missed runs, then disappears (stale figures lie)


def monitor_resources(services: Services, now: datetime | None = None, *, grace: int = STUCK_GRACE) -> dict[str, Any]:
    """One monitoring pass over every operation; returns (and stores for metrics) what it found."""
    now = now or datetime.now(UTC)
    settings = services.settings
    deadline = settings.max_execution_time + grace
    statuses: Counter[str] = Counter()
    grantee_bytes: Counter[str] = Counter()
    report: dict[str, Any] = {
        "time": format_time(now),
        "stored_bytes": 0,
        "failed_dead_runs": [],
        "overdue_pending": [],
        "redelivered": [],
        "operations_over_quota": [],
        "grantees_over_quota": [],
        "unreadable_records": 0,
    }
    for operation_id, objects in objects_by_operation(services):
        size = sum(info.size for info in objects)
        report["stored_bytes"] += size
        try:
            record = services.records.get(operation_id)
        except NotFound:
            continue  # no record: an orphan the sweep removes
        except StrongroomError as exc:
            report["unreadable_records"] += 1
            log.error("monitor_record_unreadable", alert="record_unreadable", operation_id=operation_id, error=exc.code)
            continue
        statuses[record.status] += 1
        grantee_bytes[record.grantee] += size
        if size > settings.quota_per_operation:
            report["operations_over_quota"].append(operation_id)
            log.warning(
                "quota_exceeded", alert="quota_exceeded", scope="operation", operation_id=operation_id,
                bytes=size, quota=settings.quota_per_operation,
            )  # fmt: skip
        age = (now - (record.started_at or record.created_at)).total_seconds()
        overdue = age > deadline
        ended = (
            _fail_dead_run(services, operation_id, now, deadline) if overdue and record.status == "running" else None
        )
        if ended:
            report["failed_dead_runs"].append(operation_id)
            statuses["running"] -= 1
            statuses[ended] += 1
        elif overdue and record.status == "pending":
            report["overdue_pending"].append(operation_id)
            log.warning("operation_pending_overdue", alert="pending_overdue", operation_id=operation_id, age=int(age))
        if not ended and _needs_redelivery(services, record, age) and _redeliver(services, operation_id):
            report["redelivered"].append(operation_id)
    for grantee, used in grantee_bytes.items():
        if used > settings.quota_per_grantee:
            report["grantees_over_quota"].append(grantee)
            log.warning(
                "quota_exceeded", alert="quota_exceeded", scope="grantee", grantee=grantee,
                bytes=used, quota=settings.quota_per_grantee,
            )  # fmt: skip
    report["operations"] = {status: count for status, count in statuses.items() if count}
    report["workers_alive"] = int(
        services.redis.zcount(layout.REDIS_WORKERS, time.time() - WORKER_ALIVE_WINDOW, "+inf")
    )
    report["workers_disk_full"] = _workers_disk_full(services)
    _store_snapshot(services, report)
    log.info(
        "resource_monitor",
        operations=report["operations"],
        stored_bytes=report["stored_bytes"],
        failed_dead_runs=len(report["failed_dead_runs"]),
    )
    return report


def _workers_disk_full(services: Services) -> int:
    """Workers whose disk was full since the last pass (a run was retried elsewhere): one alert for all of them."""
    since = time.time() - max(services.settings.monitor_interval, DISK_FULL_WINDOW)
    services.redis.zremrangebyscore(layout.REDIS_WORKER_DISK_FULL, "-inf", time.time() - STALE_DISK_FULL)
    workers = [w.decode() if isinstance(w, bytes) else str(w) for w in
               services.redis.zrangebyscore(layout.REDIS_WORKER_DISK_FULL, since, "+inf")]  # fmt: skip
    if workers:
        log.error("worker_disk_full", alert="worker_disk_full", workers=sorted(workers))
    return len(workers)


def _needs_redelivery(services: Services, record: OperationRecord, age: float) -> bool:
    if age <= REDELIVER_AFTER or record.status not in ("pending", "running"):
        return False
    return record.status == "pending" or not services.redis.exists(layout.redis_run_lease(record.id))


def _redeliver(services: Services, operation_id: str) -> bool:
    """Send the run task again unless it was re-sent within the last interval."""
    if services.send_task is None:
        return False
    window = max(REDELIVER_AFTER, services.settings.monitor_interval * 2)
    if not services.redis.set(layout.redis_redelivered(operation_id), 1, nx=True, ex=window):
        return False
    services.send_task(RunOperation.TASK, {"operation_id": operation_id})
    log.warning("run_redelivered", alert="run_redelivered", operation_id=operation_id)
    return True


def _fail_dead_run(services: Services, operation_id: str, now: datetime, deadline: int) -> str | None:
    """Mark a lease-less overdue run failed (or cancelled) and return that status; None if it is alive, not yet
    overdue, or finished meanwhile (checked again under the lock)."""
    lease = layout.redis_run_lease(operation_id)
    ended: list[str] = []

    def change(record: OperationRecord) -> OperationRecord:
        started = record.started_at or record.created_at
        if record.status != "running" or (now - started).total_seconds() <= deadline or services.redis.exists(lease):
            return record
        if record.cancel_requested:
            status, summary = "cancelled", "cancelled by grantee (the worker stopped before confirming)"
        else:
            status = "failed"
            summary = (
                f"worker died: the run lost its heartbeat and exceeded max_execution_time "
                f"({services.settings.max_execution_time} s) plus {deadline - services.settings.max_execution_time} s"
            )
        result = OperationResult(
            status="error", summary=summary, execution_time=max(0.0, (now - started).total_seconds())
        )
        ended.append(status)
        return record.evolve(status=status, finished_at=now, result=result)

    try:
        services.records.update(operation_id, change)
    except StrongroomError as exc:
        log.warning("monitor_fail_run_skipped", operation_id=operation_id, error=exc.code)
        return None
    if not ended:
        return None
    log.error("dead_run_failed", alert="worker_died", operation_id=operation_id, status=ended[0])
    publish(
        services.redis,
        new_event(operation_id=operation_id, action="operation.finished", result="error", reason="worker_lost"),
    )
    return ended[0]


# --- metrics ----------------------------------------------------------------------------------------------


def _store_snapshot(services: Services, report: dict[str, Any]) -> None:
    figures = {
        "time": time.time(),
        "operations": report["operations"],
        "stored_bytes": report["stored_bytes"],
        "failed_dead_runs": len(report["failed_dead_runs"]),
        "overdue_pending": len(report["overdue_pending"]),
        "over_quota": {
            "operation": len(report["operations_over_quota"]),
            "grantee": len(report["grantees_over_quota"]),
        },
        "workers_alive": report["workers_alive"],
        "workers_disk_full": report["workers_disk_full"],
    }
    ttl = services.settings.monitor_interval * SNAPSHOT_TTL_INTERVALS
    services.redis.set(layout.REDIS_MONITOR_SNAPSHOT, json.dumps(figures), ex=ttl)


class WorkerMetricsCollector(Collector):
    """Gauges from the monitor's latest snapshot plus the live audit-stream backlog, read at scrape time."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            raw = self.client.get(layout.REDIS_MONITOR_SNAPSHOT)
            backlogs = {stream: self._audit_backlog(stream) for stream in layout.REDIS_AUDIT_STREAMS}
        except redis.RedisError:
            yield GaugeMetricFamily("strongroom_worker_redis_up", "1 when Redis answered the scrape.", value=0)
            return
        yield GaugeMetricFamily("strongroom_worker_redis_up", "1 when Redis answered the scrape.", value=1)
        unpersisted = GaugeMetricFamily(
            "strongroom_audit_events_unpersisted",
            "Audit events not yet persisted, by stream (events: accesses and changes; refusals: unsigned refusals).",
            labels=["stream"],
        )
        for stream, backlog in backlogs.items():
            unpersisted.add_metric([stream.rsplit(":", 1)[-1]], backlog)
        yield unpersisted
        if not raw:
            return
        snap = json.loads(raw)
        yield GaugeMetricFamily(
            "strongroom_monitor_last_run_timestamp_seconds", "When the resource monitor last ran.", value=snap["time"]
        )
        ops = GaugeMetricFamily("strongroom_operations", "Stored operations by status.", labels=["status"])
        for status in ("pending", "running", "succeeded", "failed", "cancelled"):
            ops.add_metric([status], snap["operations"].get(status, 0))
        yield ops
        yield GaugeMetricFamily(
            "strongroom_stored_bytes", "Bytes stored under operations/.", value=snap["stored_bytes"]
        )
        quota = GaugeMetricFamily(
            "strongroom_quota_violations", "Operations or grantees over their storage quota.", labels=["scope"]
        )
        for scope, count in snap["over_quota"].items():
            quota.add_metric([scope], count)
        yield quota
        yield GaugeMetricFamily(
            "strongroom_dead_runs_failed", "Runs failed by the last monitor pass (worker died).",
            value=snap["failed_dead_runs"],
        )  # fmt: skip
        yield GaugeMetricFamily(
            "strongroom_pending_overdue", "Pending operations older than the run deadline (task lost?).",
            value=snap["overdue_pending"],
        )  # fmt: skip
        yield GaugeMetricFamily(
            "strongroom_workers_alive", "Workers with a recent heartbeat.", value=snap["workers_alive"]
        )
        yield GaugeMetricFamily(
            "strongroom_workers_disk_full", "Workers whose disk was full recently (runs were retried).",
            value=snap.get("workers_disk_full", 0),
        )  # fmt: skip

    def _audit_backlog(self, stream: str) -> int:
        """Entries not yet acknowledged by the consumer group: delivered-but-pending plus never delivered."""
        try:
            groups = self.client.xinfo_groups(stream)
        except redis.ResponseError:  # no stream yet
            return 0
        for group in groups:
            name = group["name"].decode() if isinstance(group["name"], bytes) else group["name"]
            if name == layout.REDIS_AUDIT_GROUP:
                lag = group.get("lag")
                return int(group["pending"]) + (int(lag) if lag is not None else 0)
        return int(self.client.xlen(stream))


def metrics_registry(client: redis.Redis) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(WorkerMetricsCollector(client))
    return registry


def start_metrics_server(services: Services) -> bool:
    """Serve ``/metrics`` on ``STRONGROOM_WORKER_METRICS_PORT`` if set (call once, in the worker's main process)."""
    port = services.settings.worker_metrics_port
    if not port:
        return False
    start_http_server(port, addr=services.settings.api_host, registry=metrics_registry(services.redis))
    log.info("worker_metrics_listening", port=port)
    return True
