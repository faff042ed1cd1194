"""Resource monitor: fail runs whose worker died, compare stored bytes with quotas, publish alerts and metrics.

A run message can be lost (Redis restarted without persistence, a worker killed with ``kill -9`` leaves its message
unacknowledged until the broker's visibility timeout): a ``pending`` operation older than ``REDELIVER_AFTER``, or a
``running`` one whose lease has lapsed for that long, gets its run task sent again, at most once per interval. The
run task only starts a pending record or re-claims a lease-less one, so a duplicate is harmless.

A run is dead when its record says ``running``, it started more than ``max_execution_time`` + ``grace`` ago, and
nobody holds its run lease (the running worker refreshes ``redis_run_lease`` every few seconds). It is failed
under the operation lock after re-checking both, so a worker that just finished wins. A run whose grantee asked to
cancel becomes ``cancelled`` instead.

Work per pass follows change, not what is stored (issue 14): the figures (operations by status, bytes under
``operations/``, per operation and per grantee) are running totals in Redis (``Ledger``), updated from the
operations whose record was written or deleted since the last pass (every record write notes its operation in
``REDIS_MONITOR_CHANGED``) and from a bounded slice of the bucket re-checked from a cursor each pass (which
catches objects written without a record write and notes lost in a Redis hiccup). Only pending and running
operations old enough to be overdue or lost have their record read. S3 stays the truth: a missing ledger (a
fresh or flushed Redis) is rebuilt by one full walk.

Every finding is a structured log line with ``alert=<kind>`` (what an alerting pipeline matches on). Figures go to
Redis as one snapshot (``REDIS_MONITOR_SNAPSHOT``) that ``WorkerMetricsCollector`` turns into Prometheus gauges
at scrape time, so whichever process serves ``/metrics`` (``start_metrics_server`` in the worker's main process)
shows the latest run of the job, whichever pool process ran it. Labels never carry addresses or operation ids.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import redis
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from shared import layout
from shared.cancel import CANCELLED_SUMMARY
from shared.contracts import RunOperation
from shared.errors import NotFound, StrongroomError
from shared.events import new_event, publish
from shared.logging import get_logger
from shared.models import OperationRecord, OperationResult, format_time
from shared.storage import ObjectInfo
from worker_service.pipeline.retention import objects_by_operation
from worker_service.services import Services

log = get_logger(__name__)

REDELIVER_AFTER = 120  # seconds before a pending or lease-less operation's run task is sent again
STUCK_GRACE = 300  # seconds past max_execution_time before a lease-less run is declared dead
WORKER_ALIVE_WINDOW = 120  # a worker whose heartbeat is older than this is counted as gone
DISK_FULL_WINDOW = 600  # seconds: a full disk reported this recently is alerted on (at least one monitor interval)
STALE_DISK_FULL = 24 * 3600  # entries older than this are dropped
SNAPSHOT_TTL_INTERVALS = 3  # the snapshot outlives a few missed runs, then disappears (stale figures lie)

# What a pass acted on or alerted about (each with its ``alert=`` log line), as the report names it: the ids
# involved, or a count. A pass with none of them is idle (``monitor_idle``); the report starts from these.
FOUND_IDS = ("failed_dead_runs", "overdue_pending", "redelivered", "operations_over_quota", "grantees_over_quota")
FOUND_COUNTS = ("unreadable_records", "workers_disk_full")
FINDINGS = FOUND_IDS + FOUND_COUNTS


def monitor_idle(report: Any) -> bool:
    """A monitoring pass that found nothing to act on or to alert about (its ``job.done`` is logged at DEBUG)."""
    return isinstance(report, dict) and not any(report.get(key) for key in FINDINGS)


def monitor_resources(services: Services, now: datetime | None = None, *, grace: int = STUCK_GRACE) -> dict[str, Any]:
    """One monitoring pass; returns (and stores for metrics) what it found.

    Proportional to change, not to what is stored: the figures are the ledger's running totals (``Ledger``),
    brought up to date from the operations whose record changed since the last pass, plus a bounded slice of
    the bucket re-checked from a cursor; only pending and running operations old enough to need a look have
    their record read.
    """
    now = now or datetime.now(UTC)
    settings = services.settings
    deadline = settings.max_execution_time + grace
    ledger = Ledger(services)
    report: dict[str, Any] = {
        "time": format_time(now),
        "stored_bytes": 0,
        **{key: [] for key in FOUND_IDS},
        **{key: 0 for key in FOUND_COUNTS},
    }
    if ledger.built():
        report["unreadable_records"] += ledger.apply_changes() + ledger.reconcile()
    else:
        report["unreadable_records"] += ledger.rebuild()
    for operation_id in ledger.active_since(now.timestamp() - min(REDELIVER_AFTER, deadline)):
        _check_active(services, operation_id, now, deadline, report)
    report["unreadable_records"] += ledger.apply_changes()  # what this pass itself changed
    totals = ledger.totals()
    report["stored_bytes"] = totals.stored_bytes
    report["operations"] = {status: count for status, count in totals.operations.items() if count}
    for operation_id, size in ledger.operations_over(settings.quota_per_operation):
        report["operations_over_quota"].append(operation_id)
        log.warning(
            "quota_exceeded", alert="quota_exceeded", scope="operation", operation_id=operation_id,
            bytes=size, quota=settings.quota_per_operation,
        )  # fmt: skip
    for grantee, used in ledger.grantees_over(settings.quota_per_grantee):
        report["grantees_over_quota"].append(grantee)
        log.warning(
            "quota_exceeded", alert="quota_exceeded", scope="grantee", grantee=grantee,
            bytes=used, quota=settings.quota_per_grantee,
        )  # fmt: skip
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


def _check_active(services: Services, operation_id: str, now: datetime, deadline: int, report: dict[str, Any]) -> None:
    """A pending or running operation old enough to be overdue or lost: fail a dead run, report an overdue
    pending one, send a lost run task again."""
    try:
        record = services.records.get(operation_id)
    except NotFound:
        return  # deleted since: its change is applied at the end of the pass
    except StrongroomError as exc:
        report["unreadable_records"] += 1
        log.error("monitor_record_unreadable", alert="record_unreadable", operation_id=operation_id, error=exc.code)
        return
    age = (now - (record.started_at or record.created_at)).total_seconds()
    overdue = age > deadline
    ended = _fail_dead_run(services, operation_id, now, deadline) if overdue and record.status == "running" else None
    if ended:
        report["failed_dead_runs"].append(operation_id)
    elif overdue and record.status == "pending":
        report["overdue_pending"].append(operation_id)
        log.warning("operation_pending_overdue", alert="pending_overdue", operation_id=operation_id, age=int(age))
    if not ended and _needs_redelivery(services, record, age) and _redeliver(services, operation_id):
        report["redelivered"].append(operation_id)


# --- running totals -----------------------------------------------------------------------------------------------

RECONCILE_PER_PASS = 100  # operations re-checked against the bucket per pass (from a cursor, wrapping around)
NO_RECORD = "-"  # ledger status of objects without a record (an orphan the sweep removes): bytes, no operation
_ACTIVE = ("pending", "running")

# KEYS: entries (hash id -> "status|grantee|bytes"), counts (hash status -> n, "bytes" -> total), operation bytes
# (zset), grantee bytes (zset), active (zset id -> since), ids (zset, score 0, for ranges by id).
# ARGV: id, status ("" removes the entry), grantee, bytes, since ("" when not pending/running).
_SET_ENTRY = """
local old = redis.call('HGET', KEYS[1], ARGV[1])
if old then
  local status, grantee, size = string.match(old, '^([^|]*)|([^|]*)|(-?%d+)$')
  size = tonumber(size)
  redis.call('HINCRBY', KEYS[2], status, -1)
  redis.call('HINCRBY', KEYS[2], 'bytes', -size)
  if grantee ~= '' and tonumber(redis.call('ZINCRBY', KEYS[4], -size, grantee)) <= 0 then
    redis.call('ZREM', KEYS[4], grantee)
  end
end
if ARGV[2] == '' then
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('ZREM', KEYS[3], ARGV[1])
  redis.call('ZREM', KEYS[5], ARGV[1])
  redis.call('ZREM', KEYS[6], ARGV[1])
  return 0
end
local size = tonumber(ARGV[4])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. '|' .. ARGV[3] .. '|' .. ARGV[4])
redis.call('HINCRBY', KEYS[2], ARGV[2], 1)
redis.call('HINCRBY', KEYS[2], 'bytes', size)
redis.call('ZADD', KEYS[6], 0, ARGV[1])
if ARGV[3] ~= '' then
  redis.call('ZINCRBY', KEYS[4], size, ARGV[3])
  redis.call('ZADD', KEYS[3], size, ARGV[1])
else
  redis.call('ZREM', KEYS[3], ARGV[1])
end
if ARGV[5] == '' then
  redis.call('ZREM', KEYS[5], ARGV[1])
else
  redis.call('ZADD', KEYS[5], tonumber(ARGV[5]), ARGV[1])
end
return 1
"""


@dataclass(frozen=True)
class Totals:
    stored_bytes: int
    operations: dict[str, int]  # by status


class Ledger:
    """The monitor's running totals in Redis, one entry per operation (status, grantee, bytes under its prefix).

    Kept up to date from ``REDIS_MONITOR_CHANGED``, the set every record write and delete adds its operation to
    (``OperationStore``): each pass re-reads only those operations (one LIST of the prefix, one record read).
    Objects written without a record write (an access-log entry, an orphan left by a crashed run) and changes
    whose note was lost (Redis unreachable right after a write) are caught by the reconciliation: each pass
    re-checks ``RECONCILE_PER_PASS`` operations of the bucket from a cursor, so every one is re-checked once per
    cycle. S3 stays the truth: when the ledger is missing (a new or flushed Redis) one full walk rebuilds it.
    """

    def __init__(self, services: Services) -> None:
        self.services = services
        self.redis = services.redis
        base = layout.REDIS_MONITOR_LEDGER
        self.keys = [f"{base}:{name}" for name in ("entries", "counts", "operation-bytes", "grantee-bytes")]
        self.keys += [f"{base}:active", f"{base}:ids"]
        self.built_key, self.cursor_key = f"{base}:built", f"{base}:cursor"
        self._set_entry = self.redis.register_script(_SET_ENTRY)
        self.refreshed: set[str] = set()  # operations this pass already re-read (a slice skips them)

    def built(self) -> bool:
        return bool(self.redis.exists(self.built_key))

    # --- bringing the ledger up to date ---------------------------------------------------------------------

    def rebuild(self) -> int:
        """Start again from the bucket (one walk of every object and record); the number of unreadable records."""
        self.redis.delete(*self.keys, self.cursor_key, layout.REDIS_MONITOR_CHANGED)  # later writes note again
        unreadable = 0
        for operation_id, objects in objects_by_operation(self.services):
            unreadable += not self._refresh(operation_id, objects)
        self.redis.set(self.built_key, format_time(datetime.now(UTC)))
        log.info("monitor_ledger_built", unreadable=unreadable)
        return unreadable

    def apply_changes(self) -> int:
        """Re-read every operation noted as changed; the number of unreadable records (kept for the next pass)."""
        unreadable: list[str] = []
        while True:
            popped = self.redis.spop(layout.REDIS_MONITOR_CHANGED, 500)
            if not popped:
                break
            for raw in cast(list[bytes], popped):
                operation_id = raw.decode()
                if layout.is_operation_id(operation_id) and not self._refresh(operation_id):
                    unreadable.append(operation_id)
        if unreadable:
            self.redis.sadd(layout.REDIS_MONITOR_CHANGED, *unreadable)
        return len(unreadable)

    def reconcile(self, count: int | None = None) -> int:
        """Re-check the next ``count`` operations after the cursor against the bucket (entries of operations that
        vanished from that range are dropped); wrap around at the end. Returns unreadable records."""
        count = count or RECONCILE_PER_PASS
        raw_cursor = self.redis.get(self.cursor_key)
        cursor = raw_cursor.decode() if isinstance(raw_cursor, bytes) else ""
        # "<id>0" sorts after every "<id>/..." key and before the next id (ids never contain "0" right after
        # their random part ends: an id is <agent>_<26 base32 letters>, and agents hold no "_").
        start_after = f"{layout.OPERATIONS}{cursor}0" if cursor else None
        found: dict[str, list[ObjectInfo]] = {}  # the slice's operations with all their objects, in key order
        previous, taking = "", False
        for info in self.services.store.list(layout.OPERATIONS, start_after=start_after):
            operation_id = info.key[len(layout.OPERATIONS) :].split("/", 1)[0]
            if not layout.is_operation_id(operation_id):
                continue
            if operation_id != previous:
                previous = operation_id
                # one re-read in this pass already (a change): the slice takes the next one instead
                taking = operation_id not in self.refreshed
                if taking and len(found) == count:
                    break  # the listing is in key order: every object of the last one taken was seen
                if taking:
                    found[operation_id] = []
            if taking:
                found[operation_id].append(info)
        complete = len(found) < count
        last = "" if complete else list(found)[-1]
        high = "+" if complete else f"[{last}"
        low = f"({cursor}" if cursor else "-"
        known = [m.decode() for m in cast(list[bytes], self.redis.zrangebylex(self.keys[5], low, high))]
        unreadable = 0
        for operation_id, objects in found.items():  # listed already: no LIST of its own
            unreadable += not self._refresh(operation_id, objects)
        for operation_id in sorted(set(known) - self.refreshed):  # in the ledger, not in the bucket: gone?
            unreadable += not self._refresh(operation_id)
        self.redis.set(self.cursor_key, last)
        return unreadable

    def _refresh(self, operation_id: str, objects: list[ObjectInfo] | None = None) -> bool:
        """Set the entry of one operation from the bucket; ``False`` when its record does not open."""
        self.refreshed.add(operation_id)
        store = self.services.store
        if objects is None:
            objects = list(store.list(layout.operation_prefix(operation_id)))
        size = sum(info.size for info in objects)
        if not objects:
            self._set_entry(keys=self.keys, args=[operation_id, "", "", 0, ""])
            return True
        try:
            record = self.services.records.get(operation_id)
        except NotFound:
            self._set_entry(keys=self.keys, args=[operation_id, NO_RECORD, "", size, ""])
            return True
        except StrongroomError as exc:
            log.error("monitor_record_unreadable", alert="record_unreadable", operation_id=operation_id, error=exc.code)
            return False
        since = (record.started_at or record.created_at).timestamp() if record.status in _ACTIVE else ""
        self._set_entry(keys=self.keys, args=[operation_id, record.status, record.grantee, size, since])
        return True

    # --- reading the totals ---------------------------------------------------------------------------------

    def totals(self) -> Totals:
        counts = {k.decode(): int(v) for k, v in cast(dict[bytes, bytes], self.redis.hgetall(self.keys[1])).items()}
        stored = counts.pop("bytes", 0)
        counts.pop(NO_RECORD, None)
        return Totals(stored_bytes=stored, operations=counts)

    def active_since(self, cutoff: float) -> list[str]:
        """Pending and running operations started (or created) at or before ``cutoff`` (unix seconds)."""
        return [m.decode() for m in cast(list[bytes], self.redis.zrangebyscore(self.keys[4], "-inf", cutoff))]

    def operations_over(self, quota: int) -> list[tuple[str, int]]:
        over = self.redis.zrangebyscore(self.keys[2], f"({quota}", "+inf", withscores=True)
        return [(m.decode(), int(score)) for m, score in cast(list[tuple[bytes, float]], over)]

    def grantees_over(self, quota: int) -> list[tuple[str, int]]:
        over = self.redis.zrangebyscore(self.keys[3], f"({quota}", "+inf", withscores=True)
        return [(m.decode(), int(score)) for m, score in cast(list[tuple[bytes, float]], over)]


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
            status, summary = "cancelled", f"{CANCELLED_SUMMARY} (the worker stopped before confirming)"
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
