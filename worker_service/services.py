"""The clients a worker process needs, built once per process from settings (never at import time).

Tasks and pipeline functions take a ``Services`` and nothing global, so tests can build one against real
servers or in-memory stores.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from shared.crypto.keyring import Keyring
from shared.grants import GrantSource, OpenGrants, build_grant_source
from shared.quotas import QuotaBook
from shared.records import OperationStore
from shared.settings import Settings
from shared.storage import ObjectStore


@dataclass
class Services:
    settings: Settings
    redis: redis.Redis
    store: ObjectStore
    keyring: Keyring
    records: OperationStore
    # Sends a task by name (the Celery app's ``send_task``); None where no broker is wired (unit tests).
    send_task: Callable[[str, dict[str, Any]], None] | None = None
    grants: GrantSource = field(default_factory=OpenGrants)
    quotas: QuotaBook | None = None  # None: no quota counted (unit tests with open grants)

    @classmethod
    def from_settings(cls, settings: Settings, *, grants: GrantSource | None = None) -> Services:
        """The clients of ``settings``; ``grants`` as the worker checked it at start, else built here."""
        from shared.storage.s3 import S3ObjectStore

        keyring = Keyring.from_settings(settings)
        client = redis.Redis.from_url(settings.redis_url, socket_timeout=10, health_check_interval=30)
        store = S3ObjectStore.from_settings(settings)
        records = OperationStore(store, keyring, client)
        return cls(
            settings,
            client,
            store,
            keyring,
            records,
            grants=grants
            if grants is not None
            else build_grant_source(settings.resolved_grants_source, settings.grants_file),
            quotas=QuotaBook(client, records.grantee_records, max_execution_time=settings.max_execution_time),
        )
