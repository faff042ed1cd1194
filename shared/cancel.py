"""Cancelling an operation: the one implementation, called by the API's cancel endpoint and the worker's task.

The agreed lifecycle, under the operation lock:

* ``pending`` -> ``cancelled`` at once (no worker has claimed it; a late run task finds it finished);
* ``running`` -> the cancel flag is set in Redis (``layout.redis_cancel_key``, which the run's watchdog polls; it
  kills the agent within a poll interval and the record ends ``cancelled``) and then ``cancel_requested`` in the
  record. A second cancel sets the flag again (restoring it if Redis lost it) and leaves the record as it is;
* finished -> ``Conflict`` ``operation_finished`` (409).

The flag is written before the record, so a record never says a cancel was requested that its run cannot see; if
Redis cannot take the flag nothing changes and the caller gets ``Unavailable`` ``redis_unavailable`` (retry).
Audit events are the caller's: the API records the decision with the request, the worker task its own.
"""

from __future__ import annotations

import redis

from shared import layout
from shared.errors import Conflict, Unavailable
from shared.models import OperationRecord, OperationResult, utcnow
from shared.records import OperationStore

CANCEL_TTL = 24 * 3600  # seconds; outlives any run (max execution time plus retries), then expires by itself
CANCELLED_SUMMARY = "cancelled by grantee"
FINISHED_DETAIL = "the operation has already finished"


def request_cancel(records: OperationStore, client: redis.Redis, operation_id: str) -> OperationRecord:
    """Cancel ``operation_id`` (see the module docstring) and return its record afterwards. Blocking."""

    def change(current: OperationRecord) -> OperationRecord:
        if current.finished:
            raise Conflict(FINISHED_DETAIL, code="operation_finished")
        if current.status == "pending":
            result = OperationResult(status="error", summary=CANCELLED_SUMMARY, execution_time=0)
            return current.evolve(status="cancelled", finished_at=utcnow(), result=result)
        _signal(client, operation_id)
        return current if current.cancel_requested else current.evolve(cancel_requested=True)

    return records.update(operation_id, change)


def _signal(client: redis.Redis, operation_id: str) -> None:
    try:
        client.set(layout.redis_cancel_key(operation_id), b"1", ex=CANCEL_TTL)
    except (redis.RedisError, OSError) as exc:
        raise Unavailable("cancellation could not be signalled; try again", code="redis_unavailable") from exc
