"""A private bucket and Redis database per test for the audit, retention and rotation integration tests.

These jobs walk the whole bucket (and rotation re-keys it), so they never run against the session bucket other
tests and the session's worker use; the session's SeaweedFS and Valkey servers are shared, the namespaces not.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import redis

from shared.crypto.keyring import Keyring
from shared.models import OperationRecord
from shared.records import OperationStore
from shared.settings import Settings
from shared.storage.s3 import S3ObjectStore
from worker_service.services import Services

REDIS_DB = 12


def private_services(settings: Settings, keyring: Keyring) -> Iterator[Services]:
    """Services on a fresh bucket and a flushed Redis database; the bucket is emptied afterwards."""
    base = settings.redis_url.rsplit("/", 1)[0]
    own = replace(settings, s3_bucket=f"sr-pipe-{secrets.token_hex(5)}", redis_url=f"{base}/{REDIS_DB}")
    store = S3ObjectStore.from_settings(own)
    store.ensure_bucket(expire_after_days=own.lifecycle_days)
    client = redis.Redis.from_url(own.redis_url)
    client.flushdb()
    try:
        yield Services(own, client, store, keyring, OperationStore(store, keyring, client))
    finally:
        store.delete_many([info.key for info in store.list("")])
        client.flushdb()
        client.close()


def env_for(services: Services, stack_env: dict[str, str], keyring: Keyring) -> dict[str, str]:
    """Environment for a `strongroom` subprocess that sees the same private bucket, database and keyring."""
    return {
        **stack_env,
        "STRONGROOM_S3_BUCKET": services.settings.s3_bucket,
        "REDIS_URL": services.settings.redis_url,
        "STRONGROOM_KEYRING": keyring.to_json(),
    }


def record(*, created: datetime, retention_days: int = 7, status: str = "succeeded") -> OperationRecord:
    from shared import layout

    return OperationRecord(
        id=layout.new_operation_id("privacy-audit"),
        agent="privacy-audit",
        grantee="0x" + secrets.token_hex(20),
        encryption_public_key="cHVibGlj",
        status=status,  # type: ignore[arg-type]
        created_at=created,
        expires_at=created + timedelta(days=retention_days),
    )


def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)
