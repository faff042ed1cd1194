"""Quota counters against a real Valkey: exact under concurrency, rebuilt from the records when Redis lost them."""

from __future__ import annotations

import secrets
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
import redis

from shared import layout
from shared.models import OperationRecord, Quotas, StoredArtifact
from shared.quotas import QuotaBook, QuotaExceeded

pytestmark = pytest.mark.integration

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


def address() -> str:
    return "0x" + secrets.token_hex(20)


def record(
    grantee: str, *, status: str = "pending", created: datetime = NOW, sizes: tuple[int, ...] = ()
) -> OperationRecord:
    return OperationRecord.model_validate(
        {
            "id": layout.new_operation_id("privacy-audit"),
            "agent": "privacy-audit",
            "grantee": grantee,
            "encryption_public_key": "x",
            "status": status,
            "created_at": created,
            "expires_at": created + timedelta(days=7),
            "artifacts": [
                StoredArtifact.model_validate(
                    {
                        "name": f"f{i}.txt",
                        "size": size,
                        "content_type": "text/plain",
                        "created_at": created,
                        "checksum": "sha256:" + "0" * 64,
                        "ciphertext_checksum": "sha256:" + "0" * 64,
                        "ciphertext_size": size + 100,
                        "encryption": {
                            "wrapped_key": {
                                "version": "x25519-xsalsa20-poly1305",
                                "nonce": "n",
                                "ephemPublicKey": "e",
                                "ciphertext": "c",
                            }
                        },
                    }
                )
                for i, size in enumerate(sizes)
            ],
        }
    )


def book(redis_connection: redis.Redis, records: dict[str, list[OperationRecord]] | None = None) -> QuotaBook:
    store = records if records is not None else {}
    return QuotaBook(redis_connection, lambda a: store.get(a, []), max_execution_time=600)


def test_twenty_simultaneous_creates_against_a_quota_of_two_admit_two(redis_connection: redis.Redis) -> None:
    quotas = Quotas(concurrent_operations=2)
    who = address()
    counters = book(redis_connection)

    def create(i: int) -> str | None:
        try:
            counters.admit(who, f"op{i}", quotas, NOW)
        except QuotaExceeded as exc:
            assert exc.quota == "concurrent_operations"
            return None
        return f"op{i}"

    with ThreadPoolExecutor(20) as pool:
        admitted = [op for op in pool.map(create, range(20)) if op]
    assert len(admitted) == 2
    assert counters.usage(who, NOW).concurrent_operations == 2
    for op in admitted:
        counters.finished(who, op)
    counters.admit(who, "again", quotas, NOW)
    assert counters.usage(who, NOW).concurrent_operations == 1


def test_the_hourly_quota_says_when_to_retry(redis_connection: redis.Redis) -> None:
    who, counters = address(), book(redis_connection)
    quotas = Quotas(operations_per_hour=2)
    counters.admit(who, "a", quotas, NOW)
    counters.admit(who, "b", quotas, NOW + timedelta(minutes=10))
    with pytest.raises(QuotaExceeded) as exceeded:
        counters.admit(who, "c", quotas, NOW + timedelta(minutes=20))
    assert exceeded.value.quota == "operations_per_hour"
    assert exceeded.value.retry_after == 40 * 60
    assert exceeded.value.status == 429
    counters.admit(who, "d", quotas, NOW + timedelta(minutes=61))  # the first left the window


def test_stored_bytes_are_charged_up_to_the_limit_and_credited(redis_connection: redis.Redis) -> None:
    who, counters = address(), book(redis_connection)
    quotas = Quotas(stored_bytes=100)
    counters.charge(who, 60, quotas, NOW)
    with pytest.raises(QuotaExceeded) as exceeded:
        counters.charge(who, 41, quotas, NOW)
    assert exceeded.value.quota == "stored_bytes"
    assert counters.usage(who, NOW).stored_bytes == 60  # the refused charge counted nothing
    counters.credit(who, 30)
    counters.charge(who, 70, quotas, NOW)
    assert counters.usage(who, NOW).stored_bytes == 100
    counters.credit(who, 1000)
    assert counters.usage(who, NOW).stored_bytes == 0


def test_lost_counters_are_rebuilt_from_the_records(redis_connection: redis.Redis) -> None:
    who = address()
    records = {
        who: [
            record(who, status="running", created=NOW - timedelta(minutes=5), sizes=(10, 20)),
            record(who, status="succeeded", created=NOW - timedelta(minutes=30), sizes=(5,)),
            record(who, status="succeeded", created=NOW - timedelta(hours=3), sizes=(1,)),
            record(who, status="pending", created=NOW - timedelta(days=2)),  # stale: holds no slot any more
        ]
    }
    counters = book(redis_connection, records)
    usage = counters.usage(who, NOW)
    assert (usage.concurrent_operations, usage.operations_last_hour, usage.stored_bytes) == (1, 2, 36)
    with pytest.raises(QuotaExceeded):
        counters.admit(who, "x", Quotas(concurrent_operations=1), NOW)
    redis_connection.flushdb()  # Redis lost everything: the next use rebuilds from S3
    with pytest.raises(QuotaExceeded):
        counters.charge(who, 65, Quotas(stored_bytes=100), NOW)
    counters.charge(who, 64, Quotas(stored_bytes=100), NOW)


def test_concurrent_first_uses_after_a_loss_admit_exactly_the_quota(redis_connection: redis.Redis) -> None:
    """Every create that finds the counters missing rebuilds them; no rebuild may erase another's admission."""
    who = address()
    counters = book(redis_connection, {who: [record(who, status="succeeded", created=NOW - timedelta(hours=2))]})
    quotas = Quotas(concurrent_operations=2)

    def create(i: int) -> bool:
        try:
            counters.admit(who, f"op{i}", quotas, NOW)
        except QuotaExceeded:
            return False
        return True

    for _ in range(5):
        redis_connection.delete(*(f"strongroom:quota:{who}:{what}" for what in ("active", "hourly", "bytes", "built")))
        with ThreadPoolExecutor(20) as pool:
            assert sum(pool.map(create, range(20))) == 2
