"""The clients one API process uses, built once in the lifespan (never at import time) and injectable in tests.

Blocking clients (boto3 through ``ObjectStore``, the sync Redis behind ``OperationStore`` locks, Celery's
producer) are only ever called from a worker thread (``anyio.to_thread``); the async Redis client serves the
event loop (signatures, audit events, rate limits, health).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis import Redis as SyncRedis

from api_service.long_poll import StatusWaits
from shared.auth.verifier import Verifier
from shared.contracts import celery_config
from shared.crypto.keyring import Keyring
from shared.grants import GrantSource, OpenGrants, grant_source_at_start
from shared.quotas import QuotaBook
from shared.records import OperationStore
from shared.settings import Settings
from shared.storage import ObjectStore

REDIS_CONNECTIONS = 100  # async Redis connections per API process (the library's default bound)


class TaskProducer(Protocol):
    """Sends a task by name: the API never imports worker code. Blocking; call it from a thread."""

    def send(self, task: str, kwargs: dict[str, Any]) -> None: ...


class CeleryProducer:
    """A Celery app used only as a producer, configured exactly like the worker (``shared.contracts``)."""

    def __init__(self, settings: Settings) -> None:
        from celery import Celery

        self.app = Celery("strongroom-api", set_as_current=False)
        self.app.conf.update(celery_config(settings))

    def send(self, task: str, kwargs: dict[str, Any]) -> None:
        # A bounded publish retry: a dead broker surfaces as an error in seconds, not a hung request.
        self.app.send_task(
            task,
            kwargs=kwargs,
            retry=True,
            retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5},
        )

    def close(self) -> None:
        self.app.close()


@dataclass
class ApiServices:
    settings: Settings
    redis: aioredis.Redis
    store: ObjectStore
    keyring: Keyring
    records: OperationStore
    verifier: Verifier
    producer: TaskProducer
    sync_redis: SyncRedis  # the records' lock client; also for blocking calls such as shared.cancel
    grants: GrantSource = field(default_factory=OpenGrants)
    quotas: QuotaBook | None = None  # None: no quota can be enforced (only with grants that set none)
    _closers: list[Any] = field(default_factory=list, repr=False)
    _waits: StatusWaits | None = field(default=None, repr=False)

    @property
    def waits(self) -> StatusWaits:
        """The process's long-poll subscriber (``?wait=``), started by the first request that waits."""
        if self._waits is None:
            self._waits = StatusWaits(self.redis)
        return self._waits

    def stop_waiting(self) -> None:
        """Shutdown has begun: every long poll answers now, and none waits from here on."""
        self.waits.close()

    @classmethod
    def from_settings(cls, settings: Settings, *, grants: GrantSource | None = None) -> ApiServices:
        """The clients of ``settings``; ``grants`` as loaded at start, else loaded (and checked) here."""
        from shared.storage.s3 import S3ObjectStore

        keyring = Keyring.from_settings(settings)
        # A burst (many long polls woken by one change, each recording its access) waits up to 5 s for one of the
        # pool's connections instead of failing at once with "too many connections" (a 503).
        pool = aioredis.BlockingConnectionPool.from_url(
            settings.redis_url, max_connections=REDIS_CONNECTIONS, timeout=5, socket_timeout=5, health_check_interval=30
        )
        async_redis = aioredis.Redis.from_pool(pool)
        sync_redis = SyncRedis.from_url(settings.redis_url, socket_timeout=10, health_check_interval=30)
        store = S3ObjectStore.from_settings(settings)
        producer = CeleryProducer(settings)
        records = OperationStore(store, keyring, sync_redis)
        return cls(
            settings=settings,
            redis=async_redis,
            store=store,
            keyring=keyring,
            records=records,
            verifier=Verifier(settings, async_redis),
            producer=producer,
            sync_redis=sync_redis,
            grants=grants if grants is not None else grant_source_at_start(settings, process="api"),
            quotas=QuotaBook(sync_redis, records.grantee_records, max_execution_time=settings.max_execution_time),
            _closers=[producer.close, sync_redis.close],
        )

    async def aclose(self) -> None:
        if self._waits is not None:
            await self._waits.aclose()
        for close in self._closers:
            close()
        await self.redis.aclose()
