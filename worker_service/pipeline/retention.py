"""Retention: delete operations past ``expires_at``, and sweep objects nothing names.

Deletion order is chosen so a crash at any point is finished by the next run and never exposes half a state:

1. the grantee index entry (the operation disappears from listings; the API already refuses it as expired),
2. every object under the operation's prefix except the record (artifacts, embedded copies, access log, input),
3. the record, last: while it exists the next run finds the operation again and resumes.

The ``operation.expired`` audit event is published before anything is deleted (at-least-once: a rerun after a
crash publishes it again) and lands in the global log, because the operation's own log is deleted with it.
An operation is deleted only after its record was re-read under the operation lock and is expired then.

Cleanup reads only what is due (the expiry index, ``layout.expiry_key``) and the operations of grantees whose
grant lost standing; see ``cleanup_expired``.

The S3 lifecycle rule (``Settings.lifecycle_days``) is the backstop if this job stops running.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import cast

from shared import audit_log, layout
from shared.errors import CryptoError, GrantDenied, NotFound, StrongroomError
from shared.events import new_event, publish
from shared.grants import standing
from shared.logging import get_logger
from shared.models import OperationRecord
from shared.storage import ObjectInfo
from worker_service.services import Services

log = get_logger(__name__)

DELETE_BATCH = 1000


def cleanup_expired(services: Services, now: datetime | None = None, *, limit: int | None = None) -> int:
    """Delete every operation that is due; return how many were deleted.

    Work is proportional to what is due, not to what is stored: the expiry index (``layout.expiry_key``, written
    at create) is listed only up to the current hour, and each marker found costs one record read. Operations
    whose grantee lost its grant (``grant_revoked``/``grant_expired``) are found by a second pass that lists the
    grantees (one LIST per 1000) and reads only the operations of grantees without standing. Before the index
    exists (records from an older version) one full walk builds it (``build_expiry_index``).

    ``limit`` bounds the work of one run (the next run continues); records that do not open (a keyring problem)
    are logged and left alone, never deleted blind.
    """
    now = now or datetime.now(UTC)
    if not services.store.exists(layout.EXPIRY_BUILT):
        build_expiry_index(services)
    deleted = 0
    for operation_id, marker in _candidates(services, now):
        if limit is not None and deleted >= limit:
            break
        if _expire_if_due(services, operation_id, marker, now):
            deleted += 1
    if deleted:
        log.info("retention_cleanup", deleted=deleted)
    return deleted


# A marker whose record does not exist is dropped only when older than this: a create writes its marker first
# and its record a moment later (an operation can be due at once when its grant ends now).
MARKER_MIN_AGE = timedelta(hours=1)


def _candidates(services: Services, now: datetime) -> Iterator[tuple[str, ObjectInfo | None]]:
    """Operation ids that may be due, each with its expiry marker if found by one: the markers of every hour up to
    now, then the operations of grantees whose grant is not in standing. An id can come twice (the second look
    finds it gone)."""
    current = layout.expiry_bucket(now)
    for info in services.store.list(layout.EXPIRY):
        parsed = layout.parse_expiry_key(info.key)
        if parsed is None:
            continue
        bucket, operation_id = parsed
        if bucket > current:
            break  # ascending keys: every later marker is in a later hour
        yield operation_id, info
    for prefix in services.store.list_prefixes(layout.GRANTEES):
        address = prefix[len(layout.GRANTEES) : -1]
        try:
            standing(services.grants, address, now)
            continue
        except GrantDenied:
            pass
        for info in services.store.list(prefix):
            yield layout.operation_id_from_index_key(info.key), None


def _expire_if_due(services: Services, operation_id: str, marker: ObjectInfo | None, now: datetime) -> bool:
    try:
        record = services.records.get(operation_id)
    except NotFound:
        if marker is not None and marker.last_modified <= now - MARKER_MIN_AGE:
            services.store.delete(marker.key)  # its operation is gone (deleted, or a create that crashed)
        return False
    except CryptoError as exc:
        log.error("retention_record_unreadable", operation_id=operation_id, error=exc.code)
        return False
    reason = _deletion_reason(services, record, now)
    if reason is None:
        if marker is not None and marker.key != layout.expiry_key(record.expires_at, operation_id):
            services.records.mark_expiry(record)  # a marker in the wrong hour: move it to the record's own
            services.store.delete(marker.key)
        return False  # in the current hour but not yet due, or found twice
    try:
        return _delete_operation(services, operation_id, now, reason)
    except StrongroomError as exc:  # busy lock, S3 hiccup: the next run retries
        log.warning("retention_delete_failed", operation_id=operation_id, error=exc.code)
        return False


def build_expiry_index(services: Services) -> int:
    """Write the expiry marker of every stored record, then ``EXPIRY_BUILT``; return how many were indexed.

    Runs once, for records stored before the index existed (new records get their marker at create). It walks
    the whole bucket, like every cleanup did before. If a record does not open (a keyring problem) the index is
    not declared built, so the next run walks again rather than leave that record behind.
    """
    indexed, unreadable = 0, 0
    for operation_id in services.records.all_ids():
        try:
            record = services.records.get(operation_id)
        except NotFound:
            continue  # deleted meanwhile
        except CryptoError as exc:
            log.error("retention_record_unreadable", operation_id=operation_id, error=exc.code)
            unreadable += 1
            continue
        services.records.mark_expiry(record)
        indexed += 1
    if unreadable:
        log.warning("expiry_index_incomplete", indexed=indexed, unreadable=unreadable)
    else:
        services.store.put_bytes(layout.EXPIRY_BUILT, datetime.now(UTC).isoformat().encode())
        log.info("expiry_index_built", indexed=indexed)
    return indexed


def _deletion_reason(services: Services, record: OperationRecord, now: datetime) -> str | None:
    """Why ``record`` is due for deletion: ``expired``, or its grant's ``grant_revoked``/``grant_expired``."""
    if record.is_expired(now):
        return "expired"
    try:
        standing(services.grants, record.grantee, now)
    except GrantDenied as exc:
        return exc.code
    return None


def _delete_operation(services: Services, operation_id: str, now: datetime, reason: str = "expired") -> bool:
    with services.records.locked(operation_id):
        try:
            record = services.records.get(operation_id)
        except NotFound:
            return False
        if _deletion_reason(services, record, now) is None or _run_alive(services, record):
            return False
        publish(
            services.redis,
            new_event(operation_id=operation_id, actor=None, action="operation.expired", result="ok", reason=reason),
        )
        services.records.delete_index(record)
        record_key = layout.record_key(operation_id)
        batch: list[str] = []
        for info in services.store.list(layout.operation_prefix(operation_id)):
            if info.key != record_key:
                batch.append(info.key)
            if len(batch) >= DELETE_BATCH:
                services.store.delete_many(batch)
                batch = []
        if batch:
            services.store.delete_many(batch)
        audit_log.delete_anchor(services.redis, operation_id)  # its log is gone with it, by design
        services.records.delete_record(operation_id)
        services.records.delete_expiry_marker(record)  # after the record: a crash in between is found again
    if services.quotas is not None:
        services.quotas.credit(record.grantee, sum(artifact.size for artifact in record.artifacts))
        services.quotas.finished(record.grantee, record.id)
    log.info("operation_expired", operation_id=operation_id, artifacts=len(record.artifacts), reason=reason)
    return True


def _run_alive(services: Services, record: OperationRecord) -> bool:
    """A worker still holds the run lease: never pull objects from under a live run."""
    return record.status == "running" and bool(services.redis.exists(layout.redis_run_lease(record.id)))


# --- orphans ----------------------------------------------------------------------------------------------


def sweep_orphans(
    services: Services,
    min_age: timedelta = timedelta(hours=1),
    now: datetime | None = None,
    *,
    operations: int | None = None,
) -> int:
    """Delete objects no record names, once older than ``min_age``; return how many were deleted.

    Two kinds: artifact/embedded objects of an operation whose record does not name them (a run that crashed
    after uploading, an artifact deleted while a crash interrupted its removal), and every object of a prefix
    that has no record at all (a create or a cleanup that crashed half-way). ``min_age`` keeps in-flight uploads
    and creates safe; an operation that has not ended (pending, or running under a lease) is left alone. Then
    multipart uploads left pending for ``UPLOAD_MIN_AGE`` are aborted (``abort_stale_uploads``); the count
    includes them.

    One run costs a bounded number of S3 requests whatever the bucket holds: it checks the next ``operations``
    operations (default ``Settings.orphan_sweep_operations``) in key order from a cursor kept in Redis, which
    costs their share of LIST pages plus one record read per operation that has old artifact objects, and
    saves the cursor; a run that reaches the end of ``operations/`` starts the next cycle from the beginning. So
    every operation is checked once per cycle of (stored operations / ``operations``) runs. A lost cursor (Redis
    flushed) only restarts the cycle; a run cut short is redone from the saved cursor.
    """
    now = now or datetime.now(UTC)
    cutoff = now - min_age
    count = operations or services.settings.orphan_sweep_operations
    raw = services.redis.get(SWEEP_CURSOR)
    cursor = raw.decode() if isinstance(raw, bytes) else ""
    groups, reached_end = operation_groups_after(services, cursor, count)
    deleted = 0
    for operation_id, objects in groups:
        try:
            doomed = _orphans_of(services, operation_id, objects, cutoff)
        except StrongroomError as exc:
            log.warning("orphan_sweep_skipped", operation_id=operation_id, error=exc.code)
            continue
        if not doomed:
            continue
        try:
            services.store.delete_many(doomed)
        except StrongroomError as exc:  # the next cycle tries again; one stuck operation never stalls the cursor
            log.warning("orphan_delete_failed", operation_id=operation_id, error=exc.code)
            continue
        deleted += len(doomed)
        log.info("orphans_deleted", operation_id=operation_id, count=len(doomed))
    if reached_end or not groups:
        services.redis.delete(SWEEP_CURSOR)
    else:
        services.redis.set(SWEEP_CURSOR, groups[-1][0])
    return deleted + abort_stale_uploads(services, now - max(min_age, UPLOAD_MIN_AGE))


SWEEP_CURSOR = f"{layout.REDIS_PREFIX}orphans:cursor"  # the last operation id the orphan sweep checked


# Longer than any upload takes (a part is 8 MiB; at 1 MiB/s a 10 GiB artifact needs under 3 hours), shorter than
# the lifecycle rule's one day, which not every S3-compatible server enforces.
UPLOAD_MIN_AGE = timedelta(hours=6)
UPLOAD_PREFIXES = (layout.OPERATIONS, layout.GLOBAL_AUDIT, layout.GRANTEES)  # everything this service writes


def abort_stale_uploads(services: Services, cutoff: datetime) -> int:
    """Abort multipart uploads under our prefixes started before ``cutoff`` (a worker killed mid-upload, or an
    abort that failed when S3 dropped); their parts use space and outlive the operation otherwise. An upload of
    an operation whose run lease is alive is left to that run. Returns how many were aborted."""
    aborted = 0
    for prefix in UPLOAD_PREFIXES:
        try:
            stale = [u for u in services.store.list_uploads(prefix) if u.initiated <= cutoff]
        except StrongroomError as exc:
            log.warning("upload_sweep_skipped", prefix=prefix, error=exc.code)
            continue
        for upload in stale:
            operation_id = _operation_of(upload.key)
            if operation_id and services.redis.exists(layout.redis_run_lease(operation_id)):
                continue
            try:
                services.store.abort_upload(upload)
            except StrongroomError as exc:
                log.warning("upload_abort_failed", key=upload.key, error=exc.code)
                continue
            aborted += 1
            log.info("stale_upload_aborted", key=upload.key, initiated=upload.initiated.isoformat())
    return aborted


def _operation_of(key: str) -> str | None:
    if not key.startswith(layout.OPERATIONS):
        return None
    candidate = key[len(layout.OPERATIONS) :].split("/", 1)[0]
    return candidate if layout.is_operation_id(candidate) else None


def _orphans_of(services: Services, operation_id: str, objects: list[ObjectInfo], cutoff: datetime) -> list[str]:
    old = [info.key for info in objects if info.last_modified <= cutoff]
    record_key = layout.record_key(operation_id)
    if not any(info.key == record_key for info in objects):
        return old
    swept = (layout.artifacts_prefix(operation_id), layout.embedded_prefix(operation_id))
    if not any(key.startswith(swept) for key in old):
        return []  # nothing the record could fail to name: no need to read it
    with services.records.locked(operation_id):  # a delete-artifact in progress finishes first
        try:
            record = services.records.get(operation_id)
        except NotFound:
            return []  # cleanup got there first; the next sweep sees the prefix without a record
        if not record.finished:
            # A pending or running operation may still get a late record write naming what it uploaded (a
            # stalled finish of a run whose lease lapsed): its leftovers wait until the operation has ended.
            return []
        named = {layout.record_key(operation_id), layout.input_key(operation_id)}
        for artifact in record.artifacts:
            named.update(artifact.object_keys(operation_id))  # the keys of the run that stored it
    return [key for key in old if key.startswith(swept) and key not in named]


def objects_by_operation(services: Services) -> Iterator[tuple[str, list[ObjectInfo]]]:
    """Objects grouped by operation id, one operation in memory at a time (the listing is in key order)."""
    current: str | None = None
    group: list[ObjectInfo] = []
    for info in services.store.list(layout.OPERATIONS):
        operation_id = info.key[len(layout.OPERATIONS) :].split("/", 1)[0]
        if operation_id != current:
            if current is not None and layout.is_operation_id(current):
                yield current, group
            current, group = operation_id, []
        group.append(info)
    if current is not None and layout.is_operation_id(current):
        yield current, group


def operation_groups_after(
    services: Services, cursor: str, count: int
) -> tuple[list[tuple[str, list[ObjectInfo]]], bool]:
    """The objects of the next ``count`` operations after the operation id ``cursor`` (whole operations, in key
    order; from the first when ``cursor`` is empty), and whether the listing reached the end of ``operations/``."""
    # "<id>0" sorts after every "<id>/..." key and before the next id (an id ends in 26 base32 letters after the
    # agent's "_", and agent names hold no "_", so no id continues another).
    start_after = f"{layout.OPERATIONS}{cursor}0" if cursor else None
    groups: list[tuple[str, list[ObjectInfo]]] = []
    current, objects = "", cast(list[ObjectInfo], [])
    for info in services.store.list(layout.OPERATIONS, start_after=start_after):
        operation_id = info.key[len(layout.OPERATIONS) :].split("/", 1)[0]
        if operation_id != current:
            if current and layout.is_operation_id(current):
                groups.append((current, objects))
                if len(groups) == count:
                    return groups, False
            current, objects = operation_id, []
        objects.append(info)
    if current and layout.is_operation_id(current):
        groups.append((current, objects))
    return groups, True
