"""Long polling of an operation's status (``GET /api/v1/operations/{id}?wait=<seconds>``) without a thread or a
Redis connection per waiting request.

One ``StatusWaits`` per API process holds one pub/sub subscription to ``layout.REDIS_STATUS_CHANNEL`` (see
``shared.status_feed``): a worker publishes an operation's id after each record write, and the subscriber wakes
only the requests waiting on that id. Each of them then re-reads the record (the per-process cache makes that one
Redis GET unless the record changed) and answers if the status moved. Waiting is an ``asyncio.Event``; nothing
blocks a thread.

Waiters of one operation share their re-reads: a read started after a wake-up serves every waiter woken by it,
so a hundred clients watching one operation cost one S3 read per change, not a hundred.

Safety nets, because a notification is only a hint: a waiter re-checks the record every ``RECHECK`` seconds by
itself (a notification lost while the subscriber reconnected, a status changed by a path that does not publish,
such as a cancel of a pending operation), and every waiter is woken when the subscription is (re)established.
``close()`` (at shutdown) answers every waiting request at once with the current state and stops new waits.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from shared.layout import REDIS_STATUS_CHANNEL
from shared.models import OperationRecord

log = structlog.get_logger(__name__)

MAX_WAIT = 30  # seconds: the longest ``?wait=`` the API accepts
RECHECK = 5.0  # seconds between a waiter's own re-reads when no notification came
SUBSCRIBE_GRACE = 1.0  # seconds a new waiter waits for the subscription to be up before it relies on re-checks
RETRY_MAX = 5.0  # seconds between attempts to (re)subscribe while Redis is away

Read = Callable[[], Awaitable[OperationRecord]]


@dataclass
class _Watch:
    """The waiters of one operation in this process and the re-read they share."""

    events: set[asyncio.Event] = field(default_factory=set)
    epoch: int = 0  # bumped by each wake-up: a read serves the epoch it started in and every earlier one
    read_epoch: int = -1
    read_task: asyncio.Task[OperationRecord] | None = None


class StatusWaits:
    """The process's status subscriber and the requests waiting on it (create it, then ``wait`` any number)."""

    def __init__(self, client: aioredis.Redis, *, recheck: float = RECHECK) -> None:
        self._client = client
        self._recheck = recheck
        self._watches: dict[str, _Watch] = {}
        self._subscribed = asyncio.Event()
        self._closed = False
        self._listener: asyncio.Task[None] | None = None

    @property
    def waiting(self) -> int:
        """Requests waiting right now (for tests and metrics)."""
        return sum(len(w.events) for w in self._watches.values())

    @property
    def closed(self) -> bool:
        return self._closed

    async def wait(self, operation_id: str, seen: str, read: Read, bound: float) -> OperationRecord:
        """The record once its status differs from ``seen`` or is final, or after ``bound`` seconds (the record
        as it is then). ``read`` returns the current record; errors it raises (the operation was deleted) end the
        wait and propagate."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + bound
        event = asyncio.Event()
        watch = self._watches.setdefault(operation_id, _Watch())
        watch.events.add(event)
        watch.epoch += 1  # a newcomer compares against a read that starts after it came
        try:
            await self._until_subscribed(min(bound, SUBSCRIBE_GRACE))
            while True:
                event.clear()  # before the read: a notification arriving during it wakes the next round
                current = await self._read(watch, read)
                if current.status != seen or current.finished or self._closed:
                    return current
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return current
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(remaining, self._recheck)):
                        await event.wait()
                if not event.is_set():  # nobody told us: re-read by ourselves, not from an older shared read
                    watch.epoch += 1
        finally:
            watch.events.discard(event)
            if not watch.events and self._watches.get(operation_id) is watch:
                del self._watches[operation_id]

    async def _read(self, watch: _Watch, read: Read) -> OperationRecord:
        """A read that started in the current epoch, shared by every waiter of that epoch: an epoch ends with each
        wake-up and each new waiter, so nobody is served a read that began before its own reason to look."""
        if watch.read_task is None or watch.read_epoch < watch.epoch:
            watch.read_epoch = watch.epoch
            watch.read_task = asyncio.ensure_future(read())
            watch.read_task.add_done_callback(_retrieved)
        return await asyncio.shield(watch.read_task)

    async def _until_subscribed(self, grace: float) -> None:
        if self._closed:
            return
        if self._listener is None or self._listener.done():
            self._listener = asyncio.ensure_future(self._listen())
        if not self._subscribed.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace):
                    await self._subscribed.wait()

    def _wake(self, operation_id: str) -> None:
        watch = self._watches.get(operation_id)
        if watch is None:
            return
        watch.epoch += 1
        for event in watch.events:
            event.set()

    def _wake_all(self) -> None:
        for operation_id in list(self._watches):
            self._wake(operation_id)

    async def _listen(self) -> None:
        """Hold the subscription; re-subscribe (waking everyone, who may have missed something) after a failure."""
        delay = 0.1
        while not self._closed:
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(REDIS_STATUS_CHANNEL)
                self._subscribed.set()
                self._wake_all()
                delay = 0.1
                while not self._closed:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=self._recheck)
                    if message is not None and message.get("type") == "message":
                        data = message["data"]
                        self._wake(data.decode() if isinstance(data, bytes) else str(data))
            except (RedisError, OSError) as exc:
                log.warning("long_poll.subscription_lost", error=type(exc).__name__, retry_in=delay)
            finally:
                self._subscribed.clear()
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
            if not self._closed:
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)

    def close(self) -> None:
        """Shutdown: every waiting request answers now (with the state it finds), and none waits from here on."""
        self._closed = True
        self._subscribed.set()  # nobody waits for a subscription any more
        self._wake_all()

    async def aclose(self) -> None:
        self.close()
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._listener
            self._listener = None


def _retrieved(task: asyncio.Task[OperationRecord]) -> None:
    """Mark a shared read's error as seen even when every waiter of it has gone (no "never retrieved" noise)."""
    if not task.cancelled():
        task.exception()
