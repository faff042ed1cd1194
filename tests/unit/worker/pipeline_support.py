"""Builders for the audit, retention, monitor and rotation unit tests: a real MemoryObjectStore, a real keyring,
a real Redis (its own database of the session server, flushed per test) and valid operation records."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import redis

from shared import layout
from shared.crypto.keyring import Keyring
from shared.models import Encryption, OperationRecord, StoredArtifact, WrappedKey
from shared.records import OperationStore
from shared.settings import Settings
from shared.storage.memory import MemoryObjectStore
from worker_service.services import Services

TEST_DB = 11  # a database of the session Redis no other suite uses
NOW = datetime(2030, 1, 10, 12, 0, tzinfo=UTC)


def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(f"{redis_url.rsplit('/', 1)[0]}/{TEST_DB}")
    client.flushdb()
    try:
        yield client
    finally:
        client.flushdb()
        client.close()


def make_services(client: redis.Redis, keyring: Keyring | None = None, store: Any = None, **settings: Any) -> Services:
    keyring = keyring or Keyring.from_json(Keyring.generate_json("k1"))
    store = store if store is not None else MemoryObjectStore()
    config = Settings.from_env({"REDIS_URL": "redis://127.0.0.1:1/0"}, **settings)
    return Services(config, client, store, keyring, OperationStore(store, keyring, client))


def operation_id(agent: str = "privacy-audit") -> str:
    return layout.new_operation_id(agent)


def artifact(name: str, *, embedded: bool = False, created: datetime = NOW) -> StoredArtifact:
    """A valid artifact of a fresh run (its objects are not stored: ``store_operation`` does that)."""
    digest = "sha256:" + secrets.token_hex(32)
    wrapped = WrappedKey(version="x25519-xsalsa20-poly1305", nonce="bm9uY2U=", ephemPublicKey="ZXBo", ciphertext="Y3Q=")
    return StoredArtifact(
        name=name,
        size=10,
        content_type="text/plain",
        created_at=created,
        checksum=digest,
        ciphertext_checksum=digest,
        ciphertext_size=58,
        encryption=Encryption(wrapped_key=wrapped),
        embedded=embedded,
        run_id=layout.new_run_id(),
    )


def make_record(
    op_id: str | None = None,
    *,
    created: datetime = NOW - timedelta(days=1),
    retention_days: int = 7,
    status: str = "succeeded",
    grantee: str = "0x" + "ab" * 20,
    artifacts: list[StoredArtifact] | None = None,
    **extra: Any,
) -> OperationRecord:
    return OperationRecord(
        id=op_id or operation_id(),
        agent="privacy-audit",
        grantee=grantee,
        encryption_public_key="cHVibGlj",
        status=status,  # type: ignore[arg-type]
        created_at=created,
        expires_at=created + timedelta(days=retention_days),
        artifacts=artifacts or [],
        **extra,
    )


def store_operation(services: Services, record: OperationRecord, payload: bytes = b"ciphertext") -> None:
    """Everything a finished operation leaves in the bucket: record, input, index, artifact objects."""
    services.records.create(record, {"text": "hello"})
    for item in record.artifacts:
        services.store.put_bytes(item.object_key(record.id), payload)
        embedded = item.embedded_object_key(record.id)
        if embedded:
            services.records.put_sealed(embedded, b"plain")


def keys_of(services: Services, prefix: str = "") -> list[str]:
    return [info.key for info in services.store.list(prefix)]
