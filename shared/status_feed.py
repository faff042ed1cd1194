"""Status notifications: how a worker's record write wakes the API requests long-polling that operation.

The contract (both sides import it from here):

* after a worker has written an operation's record (claim -> ``running``, the final status, a failure after the
  last retry), it PUBLISHes the operation id on ``layout.REDIS_STATUS_CHANNEL``;
* each API process keeps one subscriber on that channel (``api_service.long_poll``) and wakes only the requests
  waiting on that id; they re-read the record, which stays the only truth.

A notification is a hint, best effort in both directions: a publish that fails (Redis down) is logged and the
run goes on, and a subscriber that misses one (reconnecting) is covered by each waiter's periodic re-check. So a
lost notification delays an answer by at most that interval; it never makes one wrong.
"""

from __future__ import annotations

import redis
import structlog

from shared.layout import REDIS_STATUS_CHANNEL

__all__ = ["REDIS_STATUS_CHANNEL", "announce"]

log = structlog.get_logger(__name__)


def announce(client: redis.Redis, operation_id: str) -> None:
    """Tell every API process that ``operation_id``'s record was just written. Never raises for Redis trouble."""
    try:
        client.publish(REDIS_STATUS_CHANNEL, operation_id)
    except (redis.RedisError, OSError) as exc:
        log.warning("status.announce_failed", operation_id=operation_id, error=type(exc).__name__)
