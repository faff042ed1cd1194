"""Cleanup reads only what is due (issue 14, goal 7): the expiry index, its one-time migration, and the pass over
grantees whose grant lost standing. A counting store proves the request count follows the due operations."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import redis
from pipeline_support import NOW, make_record, make_services, redis_client, store_operation

from shared import layout
from shared.grants import OPEN_GRANT, Grant
from shared.models import OperationRecord
from shared.records import RecordCache
from tests.helpers.counting_store import CountingStore
from worker_service.pipeline import retention
from worker_service.services import Services

pytestmark = pytest.mark.unit


class Revocable:
    """A grant source where some addresses lost their grant."""

    name = "test"

    def __init__(self, revoked: set[str]) -> None:
        self.revoked = revoked

    def lookup(self, address: str) -> Grant | None:
        return None if address in self.revoked else OPEN_GRANT


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    yield from redis_client(redis_url)


def _services(client: redis.Redis) -> tuple[Services, CountingStore]:
    store = CountingStore()
    return make_services(client, store=store), store


GRANTEES = ["0x" + f"{n:02x}" * 20 for n in range(1, 6)]


def _fill(services: Services, stored: int, due: int) -> list[OperationRecord]:
    """``stored`` operations far from expiry spread over a few grantees, and ``due`` that expired before NOW."""
    for n in range(stored):
        store_operation(services, make_record(created=NOW - timedelta(hours=n % 50), grantee=GRANTEES[n % 5]))
    expired = [make_record(created=NOW - timedelta(days=8, hours=n % 30), grantee=GRANTEES[n % 5]) for n in range(due)]
    for record in expired:
        store_operation(services, record)
    return expired


def _requests_of_one_cleanup(client: redis.Redis, stored: int, due: int) -> tuple[int, Counter[str]]:
    client.flushdb()
    services, store = _services(client)
    expired = _fill(services, stored, due)
    retention.build_expiry_index(services)  # the index exists (built once, or written at create)
    services.records.cache = RecordCache()  # a cold cache: every record read is counted, however many are stored
    store.requests.clear()
    assert retention.cleanup_expired(services, NOW) == due
    assert not any(store.inner.exists(layout.record_key(r.id)) for r in expired)
    return store.total, Counter(store.requests)


def test_requests_per_cleanup_depend_on_the_due_operations_not_the_stored_ones(client: redis.Redis) -> None:
    small, small_calls = _requests_of_one_cleanup(client, stored=200, due=10)
    large, large_calls = _requests_of_one_cleanup(client, stored=2500, due=10)
    assert large == small, (small_calls, large_calls)
    more_due, _ = _requests_of_one_cleanup(client, stored=200, due=20)
    per_due = (more_due - small) / 10
    # Per due operation: read the record, lock-and-re-read, list its prefix, delete its objects, the index entry,
    # the record and the marker; plus a constant (index built? list markers, list grantees).
    assert per_due <= 10
    assert small <= 5 + 10 * per_due


def test_nothing_due_costs_a_constant_handful_of_requests(client: redis.Redis) -> None:
    services, store = _services(client)
    _fill(services, stored=1200, due=0)
    assert retention.cleanup_expired(services, NOW) == 0  # first run: builds the index (the full walk)
    store.requests.clear()
    assert retention.cleanup_expired(services, NOW) == 0
    assert store.requests == Counter({"exists": 1, "list": 1, "list_prefixes": 1})


def test_records_from_before_the_index_are_migrated_once_and_later_expire(client: redis.Redis) -> None:
    services, store = _services(client)
    legacy = [
        make_record(created=NOW - timedelta(days=8)),  # already due
        make_record(created=NOW - timedelta(days=2)),  # due in five days
    ]
    for record in legacy:  # what an older version stored: record, input and grantee index, no expiry marker
        services.records.put_sealed(layout.input_key(record.id), b"{}")
        services.records.put(record)
        store.inner.put_bytes(
            layout.grantee_index_key(record.grantee, int(record.created_at.timestamp()), record.id), b""
        )
    assert not store.inner.exists(layout.EXPIRY_BUILT)

    assert retention.cleanup_expired(services, NOW) == 1
    assert store.inner.exists(layout.EXPIRY_BUILT)
    assert [info.key for info in store.inner.list(layout.EXPIRY)] == [
        layout.expiry_key(legacy[1].expires_at, legacy[1].id)  # the deleted one's marker went with it
    ]
    store.requests.clear()
    later = NOW + timedelta(days=5, hours=1)
    assert retention.cleanup_expired(services, later) == 1
    assert store.requests["list"] == 2  # the markers, then the one operation's prefix: no walk again
    assert [info.key for info in store.inner.list("")] == [layout.EXPIRY_BUILT]


def test_an_unreadable_record_keeps_the_migration_pending(client: redis.Redis) -> None:
    services, store = _services(client)
    record = make_record(created=NOW - timedelta(days=2))
    services.records.put(record)
    store.inner.put_bytes(layout.record_key(make_record().id), b"not sealed by this keyring")
    retention.cleanup_expired(services, NOW)
    assert not store.inner.exists(layout.EXPIRY_BUILT)  # the next run walks again rather than leave it behind
    assert store.inner.exists(layout.expiry_key(record.expires_at, record.id))


def test_operations_of_a_revoked_grantee_are_deleted_and_only_theirs_are_read(client: redis.Redis) -> None:
    services, store = _services(client)
    _fill(services, stored=40, due=0)
    revoked = "0x" + "ee" * 20
    theirs = [make_record(created=NOW - timedelta(hours=n), grantee=revoked) for n in range(3)]
    for record in theirs:
        store_operation(services, record)
    retention.build_expiry_index(services)
    services.grants = Revocable({revoked})
    services.records.cache = RecordCache()  # cold: every record read from S3 is counted
    store.requests.clear()

    assert retention.cleanup_expired(services, NOW) == 3
    # each of theirs read, and re-read under the lock unless the record cache still holds it: nobody else's
    assert 3 <= store.requests["get_bytes"] <= 2 * 3
    assert not any(store.inner.exists(layout.record_key(r.id)) for r in theirs)
    assert not any(store.inner.exists(layout.expiry_key(r.expires_at, r.id)) for r in theirs)
    assert list(store.inner.list(layout.grantee_prefix(revoked))) == []
    assert retention.cleanup_expired(services, NOW) == 0


def test_a_marker_whose_record_is_gone_is_dropped_once_old(client: redis.Redis) -> None:
    services, store = _services(client)
    retention.build_expiry_index(services)
    now = datetime.now(UTC)
    record = make_record(created=now - timedelta(days=8))
    marker = layout.expiry_key(record.expires_at, record.id)
    store.inner.put_bytes(marker, b"")  # a create in flight (marker first), or one that crashed before its record
    assert retention.cleanup_expired(services, now + timedelta(minutes=30)) == 0
    assert store.inner.exists(marker)  # young: its record may be about to be written
    assert retention.cleanup_expired(services, now + timedelta(hours=2)) == 0
    assert not store.inner.exists(marker)
