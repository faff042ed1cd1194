"""Tell the API a worker is alive: ``ZADD layout.REDIS_WORKERS <name> <unix time>`` every few seconds.

A daemon thread in the worker's main process (started on ``worker_ready``, stopped on shutdown), so it beats
while every pool slot is busy running agents. ``/readyz`` counts members seen within the last minute; members
older than a day are trimmed so the set stays small however many workers have come and gone. A worker that cannot
sandbox agents (``problem``) says so in ``layout.REDIS_WORKER_SANDBOX`` with each beat, so ``/readyz`` can name
the reason.
"""

from __future__ import annotations

import threading
import time
from contextlib import suppress

import redis
import structlog

from shared import layout

log = structlog.get_logger(__name__)

INTERVAL = 10.0
STALE_AFTER = 24 * 3600


class Heartbeat:
    def __init__(self, client: redis.Redis, name: str, interval: float = INTERVAL, problem: str | None = None) -> None:
        self.client = client
        self.name = name
        self.problem = problem
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def beat(self) -> None:
        now = time.time()
        pipe = self.client.pipeline(transaction=False)
        pipe.zadd(layout.REDIS_WORKERS, {self.name: now})
        pipe.zremrangebyscore(layout.REDIS_WORKERS, "-inf", now - STALE_AFTER)
        if self.problem is None:
            pipe.hdel(layout.REDIS_WORKER_SANDBOX, self.name)
        else:
            pipe.hset(layout.REDIS_WORKER_SANDBOX, self.name, self.problem)
        pipe.execute()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.beat()
            except redis.RedisError as exc:  # Redis restarting: keep trying, the next beat catches up
                log.warning("heartbeat.failed", error=type(exc).__name__)
            self._stop.wait(self.interval)

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._loop, name="strongroom-heartbeat", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop beating and leave the set, so readiness drops at once instead of after a minute."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        with suppress(redis.RedisError):  # else the member ages out of the readiness window anyway
            self.client.zrem(layout.REDIS_WORKERS, self.name)
            self.client.hdel(layout.REDIS_WORKER_SANDBOX, self.name)
