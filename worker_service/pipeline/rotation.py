"""Server keyring rotation: re-encrypt every sealed blob under the primary key, and guard key removal.

Sealed blobs (keyring-encrypted, the S3 key as AAD) are an operation's ``record.json``, ``input.json``,
``embedded/*`` and ``access_log/*``, and the global ``audit/*`` log. Artifact payloads are not: their keys are
wrapped for the grantee, so rotation never touches them.

The procedure: roll out a keyring with a new primary to every process (``strongroom keyring rotate``), run
``rotate_keys`` (the daily beat job, or ``strongroom keys reencrypt``), then ``check_removable`` the old key and
drop it from the keyring. ``rotate_keys`` only rewrites blobs whose header names another key, re-reads each one
under the lock its writers use (the operation lock, or the global audit log lock) so a concurrent update is never
overwritten by a stale copy, and writes the same plaintext back: access-log digests, and so the hash chain, are
unchanged. Stopping it at any point loses nothing (each PUT replaces one object atomically) and the next run
continues where it stopped.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, cast

from shared import layout
from shared.errors import IntegrityError, KeyringError, StrongroomError
from shared.events import new_event, publish
from shared.logging import get_logger
from shared.storage import ObjectInfo
from worker_service.pipeline.audit import global_log_lock
from worker_service.pipeline.retention import objects_by_operation, operation_groups_after
from worker_service.services import Services

log = get_logger(__name__)

HEADER_BYTES = 128  # magic, version, id length, id (<= 64), nonce and tag: enough to parse any v1 header
INVALID = "<invalid>"  # usage bucket for objects that are not keyring blobs (corrupt or foreign)
_OPERATION_SEALED_FILES = ("record.json", "input.json")
_OPERATION_SEALED_DIRS = ("embedded/", "access_log/")


@dataclass
class RotationReport:
    primary: str
    scanned: int = 0
    current: int = 0
    rotated: Counter[str] = field(default_factory=Counter)
    remaining: Counter[str] = field(default_factory=Counter)  # still under an old key: busy, failed or limited
    unreadable: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "primary": self.primary,
            "scanned": self.scanned,
            "current": self.current,
            "rotated": dict(self.rotated),
            "remaining": dict(self.remaining),
            "unreadable": self.unreadable,
            "complete": not self.remaining and not self.unreadable,
        }


def is_sealed_key(key: str) -> bool:
    """True for objects sealed with the server keyring (everything rotation must rewrite)."""
    if key.startswith(layout.GLOBAL_AUDIT):
        return True
    if not key.startswith(layout.OPERATIONS):
        return False
    parts = key[len(layout.OPERATIONS) :].split("/", 1)
    return len(parts) == 2 and (parts[1] in _OPERATION_SEALED_FILES or parts[1].startswith(_OPERATION_SEALED_DIRS))


def key_id_of(services: Services, key: str) -> str:
    """The key id in a stored blob's header, reading only the first bytes of the object."""
    head = b"".join(services.store.open_range(key, 0, HEADER_BYTES - 1))
    try:
        return services.keyring.key_id_of(head)
    except IntegrityError:
        return INVALID


def key_usage(services: Services) -> dict[str, int]:
    """How many sealed blobs each key id protects (``INVALID`` counts objects that are not keyring blobs)."""
    usage: Counter[str] = Counter()
    for _lock_name, objects in _sealed_groups(services):
        for info in objects:
            usage[key_id_of(services, info.key)] += 1
    return dict(usage)


def check_removable(services: Services, key_id: str) -> None:
    """Refuse (``KeyringError``) to let ``key_id`` leave the keyring while it is primary or protects data.

    Run it against the keyring every process uses; a process still writing with an older keyring would make the
    answer stale, so roll the new primary out everywhere before rotating.
    """
    if key_id == services.keyring.primary_id:
        raise KeyringError(f"key {key_id!r} is the primary: promote another key and rotate first")
    in_use = key_usage(services).get(key_id, 0)
    if in_use:
        raise KeyringError(
            f"key {key_id!r} still protects {in_use} stored blob(s): run the key rotation, then check again"
        )


def rotate_keys(services: Services, batch_size: int = 100, *, limit: int | None = None) -> dict[str, Any]:
    """Re-encrypt every sealed blob not under the primary key; return counts per key id.

    ``batch_size`` bounds how many blobs are rewritten under one lock hold; ``limit`` bounds the rewrites of one
    run (the next run continues). A busy lock or a failed write leaves the blobs for the next run, reported under
    ``remaining``.
    """
    report = RotationReport(primary=services.keyring.primary_id)
    for log_id, objects in _sealed_groups(services):
        _rotate_group(services, log_id, objects, report, batch_size, limit)
    _announce(services, report)
    return report.as_dict()


ROTATION_OPERATIONS_PER_RUN = 500  # operations one periodic run looks at (each costs a LIST page share and a read
# of each sealed blob's header); the next run continues from the cursor


def rotate_keys_step(services: Services, *, operations: int | None = None, batch_size: int = 100) -> dict[str, Any]:
    """The periodic job: one bounded step of a rotation cycle, from a cursor; returns what this step did.

    A cycle visits every operation (``operations`` per step, default ``ROTATION_OPERATIONS_PER_RUN``, in key
    order from the cursor kept in Redis), then the global audit log. A cycle that ends with nothing left under
    another key and nothing unreadable marks the primary done: later steps cost nothing (no S3 request) until
    the keyring's primary changes, which starts a new cycle. A cycle that left something (a busy lock, a failed
    write) is followed by another. ``complete`` in the report is true once the current primary is done.
    Stopping anywhere loses nothing: the cursor is saved at the end of a step, so a step cut short is redone.
    """
    count = operations or ROTATION_OPERATIONS_PER_RUN
    primary = services.keyring.primary_id
    report = RotationReport(primary=primary)
    state = {k.decode(): v.decode() for k, v in cast(dict[bytes, bytes], services.redis.hgetall(_CYCLE)).items()}
    if state.get("done") == primary:
        return report.as_dict()
    if state.get("primary") != primary:  # a new primary: start a cycle from the beginning
        state = {"primary": primary, "cursor": "", "left": "0"}
    cursor = state["cursor"]
    groups, reached_end = operation_groups_after(services, cursor, count)
    for operation_id, objects in groups:
        sealed = [info for info in objects if is_sealed_key(info.key)]
        _rotate_group(services, operation_id, sealed, report, batch_size, None)
        cursor = operation_id
    if reached_end:
        global_log = list(services.store.list(layout.GLOBAL_AUDIT))
        _rotate_group(services, None, global_log, report, batch_size, None)
    left = int(state["left"]) + sum(report.remaining.values()) + report.unreadable
    if reached_end:
        done = left == 0
        state = {"primary": primary, "cursor": "", "left": "0", "done": primary if done else ""}
    else:
        state = {"primary": primary, "cursor": cursor, "left": str(left), "done": ""}
    services.redis.hset(_CYCLE, mapping=cast(Any, state))
    result = report.as_dict()
    result["complete"] = state["done"] == primary
    result["cycle_finished"] = reached_end
    _announce(services, report)
    return result


_CYCLE = f"{layout.REDIS_PREFIX}rotation:cycle"  # hash: primary, cursor, left (blobs left this cycle), done


def _rotate_group(
    services: Services,
    log_id: str | None,
    objects: list[ObjectInfo],
    report: RotationReport,
    batch_size: int,
    limit: int | None,
) -> None:
    """Scan one lock's sealed blobs and rewrite those under another key, ``batch_size`` per lock hold."""
    stale: list[tuple[str, str]] = []
    for info in objects:
        report.scanned += 1
        key_id = key_id_of(services, info.key)
        if key_id == report.primary:
            report.current += 1
        elif key_id == INVALID:
            report.unreadable += 1
            log.error("rotation_blob_unreadable", key=info.key)
        else:
            stale.append((info.key, key_id))
    for start in range(0, len(stale), batch_size):
        chunk = stale[start : start + batch_size]
        if limit is not None and sum(report.rotated.values()) >= limit:
            report.remaining.update(key_id for _, key_id in chunk)
            continue
        _rotate_chunk(services, log_id, chunk, report, limit)


def _rotate_chunk(
    services: Services, log_id: str | None, chunk: list[tuple[str, str]], report: RotationReport, limit: int | None
) -> None:
    done = 0
    try:
        with _lock_for(services, log_id):
            for key, key_id in chunk:
                if limit is not None and sum(report.rotated.values()) >= limit:
                    break
                if _reseal(services, key):
                    report.rotated[key_id] += 1
                else:
                    report.current += 1
                done += 1
    except StrongroomError as exc:  # lock busy, S3 error, a key missing from the keyring: retry next run
        log.warning("rotation_chunk_failed", log=log_id or "global", error=exc.code)
    report.remaining.update(key_id for _, key_id in chunk[done:])


def _reseal(services: Services, key: str) -> bool:
    """Re-encrypt one blob under the primary; False if a writer already did (re-read under the lock)."""
    blob = services.store.get_bytes(key)
    if services.keyring.key_id_of(blob) == services.keyring.primary_id:
        return False
    services.records.put_sealed(key, services.keyring.decrypt(blob, key.encode()))
    return True


def _lock_for(services: Services, log_id: str | None) -> AbstractContextManager[None]:
    return services.records.locked(log_id) if log_id else global_log_lock(services)


def _sealed_groups(services: Services) -> Iterator[tuple[str | None, list[ObjectInfo]]]:
    """Sealed objects grouped by the lock that guards them: each operation's, then the global log's."""
    for operation_id, objects in objects_by_operation(services):
        sealed = [info for info in objects if is_sealed_key(info.key)]
        if sealed:
            yield operation_id, sealed
    global_log = list(services.store.list(layout.GLOBAL_AUDIT))
    if global_log:
        yield None, global_log


def _announce(services: Services, report: RotationReport) -> None:
    total = sum(report.rotated.values())
    log.info("key_rotation", **report.as_dict())
    if total:
        reason = f"re-encrypted {total} blob(s) under {report.primary}"
        publish(services.redis, new_event(action="key.rotated", result="ok", reason=reason))
