"""Key rotation: everything sealed moves to the new primary, resumably; an old key in use cannot be removed."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
from pipeline_support import artifact, keys_of, make_record, make_services, redis_client, store_operation

import shared.records as records_module
from shared import audit_log, events, layout
from shared.crypto.keyring import Keyring
from shared.errors import KeyringError
from shared.records import OperationStore
from shared.storage.memory import MemoryObjectStore
from worker_service.pipeline import rotation
from worker_service.services import Services

pytestmark = pytest.mark.unit

OLD = Keyring.from_json(Keyring.generate_json("old"))
NEW = OLD.add_primary("new")


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    yield from redis_client(redis_url)


@pytest.fixture
def store() -> MemoryObjectStore:
    return MemoryObjectStore()


def _populate(services: Services, operations: int = 3) -> list[str]:
    """Operations with every kind of sealed blob, plus a global log, all under the services' primary."""
    ids = []
    for i in range(operations):
        record = make_record(artifacts=[artifact(f"a{i}.txt", embedded=True), artifact("b.bin")])
        store_operation(services, record)
        for _ in range(2):
            event = events.new_event(operation_id=record.id, action="artifact.url", result="allowed")
            audit_log.append_batch(services.records, record.id, [event])
        ids.append(record.id)
    audit_log.append_batch(services.records, None, [events.new_event(action="auth", result="denied")])
    return ids


def _sealed(services: Services) -> list[str]:
    return [k for k in keys_of(services) if rotation.is_sealed_key(k)]


def _plaintexts(services: Services) -> dict[str, bytes]:
    return {key: services.records.get_sealed(key) for key in _sealed(services)}


def test_sealed_key_classification() -> None:
    op = layout.new_operation_id("privacy-audit")
    assert rotation.is_sealed_key(layout.record_key(op))
    assert rotation.is_sealed_key(layout.input_key(op))
    assert rotation.is_sealed_key(layout.embedded_key(op, "x.txt", layout.new_run_id()))
    assert rotation.is_sealed_key(layout.embedded_key(op, "x.txt", None))
    assert rotation.is_sealed_key(layout.access_log_key(op, 1))
    assert rotation.is_sealed_key(layout.access_log_head_key(op))
    assert rotation.is_sealed_key(layout.global_access_log_key(3))
    assert not rotation.is_sealed_key(layout.artifact_key(op, "x.txt", layout.new_run_id()))
    assert not rotation.is_sealed_key(layout.grantee_index_key("0x" + "ab" * 20, 1, op))


def test_rotation_reencrypts_everything_then_the_old_key_can_be_removed(
    client: redis.Redis, store: MemoryObjectStore
) -> None:
    before = make_services(client, OLD, store)
    ids = _populate(before)
    artifacts_before = {k: store.get_bytes(k) for k in keys_of(before) if k.endswith(".enc")}
    plaintexts = _plaintexts(before)
    assert len(plaintexts) == 3 * 6 + 2  # record, input, embedded, 2 batches, head per op; global batch, head

    services = make_services(client, NEW, store)
    assert rotation.key_usage(services) == {"old": len(plaintexts)}
    with pytest.raises(KeyringError, match="still protects 20"):
        rotation.check_removable(services, "old")
    with pytest.raises(KeyringError, match="primary"):
        rotation.check_removable(services, "new")

    report = rotation.rotate_keys(services, batch_size=2)
    assert report["rotated"] == {"old": len(plaintexts)} and report["complete"]
    assert rotation.key_usage(services) == {"new": len(plaintexts)}
    rotation.check_removable(services, "old")  # no longer refused

    after = make_services(client, NEW.without("old"), store)
    assert _plaintexts(after) == plaintexts  # same bytes, now readable without the old key
    assert {k: store.get_bytes(k) for k in artifacts_before} == artifacts_before  # payloads untouched
    for op in [*ids, None]:
        assert audit_log.verify_chain(after.records, op).ok  # digests of plaintext: the chain survives
    assert after.records.get(ids[0]).id == ids[0]

    again = rotation.rotate_keys(after)
    assert again["rotated"] == {} and again["current"] == len(plaintexts)  # idempotent
    rotated_events = [events.decode(f) for _, f in client.xrange(layout.REDIS_AUDIT_STREAM)]
    assert [e.action for e in rotated_events] == ["key.rotated"]


class _DiesAfter:
    """Wraps a store; the process 'dies' (SystemExit) on the n-th PUT, as a kill -9 would stop it."""

    def __init__(self, inner: MemoryObjectStore, puts: int) -> None:
        self._inner, self._left = inner, puts

    def put_bytes(self, key: str, data: bytes, **kwargs: Any) -> None:
        if self._left == 0:
            raise SystemExit("killed")
        self._left -= 1
        self._inner.put_bytes(key, data, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def test_rotation_interrupted_midway_then_resumed_ends_fully_rotated(
    client: redis.Redis, store: MemoryObjectStore
) -> None:
    _populate(make_services(client, OLD, store), operations=4)
    plaintexts = _plaintexts(make_services(client, OLD, store))
    dying = make_services(client, NEW, _DiesAfter(store, 9))
    dying.records = OperationStore(dying.store, NEW, client)
    with pytest.raises(SystemExit):
        rotation.rotate_keys(dying)
    services = make_services(client, NEW, store)
    usage = rotation.key_usage(services)
    assert usage == {"new": 9, "old": len(plaintexts) - 9}
    assert _plaintexts(services) == plaintexts  # nothing lost at the cut
    report = rotation.rotate_keys(services)
    assert report["rotated"] == {"old": len(plaintexts) - 9} and report["complete"]
    assert rotation.key_usage(services) == {"new": len(plaintexts)}


def test_limit_bounds_a_run_and_reports_what_remains(client: redis.Redis, store: MemoryObjectStore) -> None:
    _populate(make_services(client, OLD, store), operations=2)
    services = make_services(client, NEW, store)
    first = rotation.rotate_keys(services, batch_size=3, limit=5)
    assert first["rotated"] == {"old": 5} and first["remaining"] == {"old": 9} and not first["complete"]
    second = rotation.rotate_keys(services, batch_size=3)
    assert second["rotated"] == {"old": 9} and second["complete"]


def test_a_busy_operation_is_left_for_the_next_run(
    client: redis.Redis, store: MemoryObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = _populate(make_services(client, OLD, store), operations=2)
    services = make_services(client, NEW, store)
    holder = client.lock(layout.redis_operation_lock(ids[0]), timeout=30)
    assert holder.acquire()
    monkeypatch.setattr(records_module, "LOCK_WAIT", 0)  # give up at once instead of waiting 15 s
    try:
        report = rotation.rotate_keys(services)
    finally:
        holder.release()
    assert report["remaining"] == {"old": 6} and not report["complete"]
    assert rotation.rotate_keys(services)["complete"]


def test_corrupt_blobs_are_reported_not_rewritten(client: redis.Redis, store: MemoryObjectStore) -> None:
    services = make_services(client, NEW, store)
    key = layout.global_access_log_key(1)
    store.put_bytes(key, b"not a keyring blob")
    report = rotation.rotate_keys(services)
    assert report["unreadable"] == 1 and not report["complete"]
    assert store.get_bytes(key) == b"not a keyring blob"
    assert rotation.key_usage(services) == {rotation.INVALID: 1}


# --- the periodic job: bounded steps from a cursor (issue 14, goal 7) ---------------------------------------------


class _CountingStore:
    """Counts the store calls a step makes (each is at least one S3 request)."""

    def __init__(self, inner: MemoryObjectStore) -> None:
        self.inner, self.calls = inner, 0

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.inner, name)
        if not callable(attribute):
            return attribute

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return attribute(*args, **kwargs)

        return counted


def test_steps_rotate_a_bounded_number_of_operations_until_done(client: redis.Redis, store: MemoryObjectStore) -> None:
    _populate(make_services(client, OLD, store), operations=5)
    plaintexts = _plaintexts(make_services(client, OLD, store))
    counting = _CountingStore(store)
    services = make_services(client, NEW, counting)
    services.records = OperationStore(counting, NEW, client)  # type: ignore[arg-type]
    steps = []
    while True:
        counting.calls = 0
        report = rotation.rotate_keys_step(services, operations=2)
        steps.append((report, counting.calls))
        if report["cycle_finished"]:
            break
    assert len(steps) == 3  # 2 + 2 + 1 operations, the global log with the last
    assert [sum(r["rotated"].values()) for r, _ in steps] == [12, 12, 6 + 2]
    assert steps[-1][0]["complete"] and not steps[0][0]["complete"]
    assert rotation.key_usage(make_services(client, NEW, store)) == {"new": len(plaintexts)}
    assert _plaintexts(make_services(client, NEW, store)) == plaintexts
    # a step of two operations costs the same whatever is stored
    assert steps[0][1] == steps[1][1]
    counting.calls = 0
    idle = rotation.rotate_keys_step(services, operations=2)  # the primary is done: no S3 request at all
    assert counting.calls == 0 and idle["complete"] and idle["rotated"] == {}


def test_a_new_primary_starts_a_new_cycle(client: redis.Redis, store: MemoryObjectStore) -> None:
    _populate(make_services(client, OLD, store), operations=2)
    assert rotation.rotate_keys_step(make_services(client, NEW, store))["complete"]
    newer = NEW.add_primary("newer")
    report = rotation.rotate_keys_step(make_services(client, newer, store))
    assert report["rotated"] == {"new": 14} and report["complete"]


def test_a_cycle_that_left_something_is_run_again(
    client: redis.Redis, store: MemoryObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = _populate(make_services(client, OLD, store), operations=3)
    services = make_services(client, NEW, store)
    holder = client.lock(layout.redis_operation_lock(sorted(ids)[0]), timeout=30)
    assert holder.acquire()
    monkeypatch.setattr(records_module, "LOCK_WAIT", 0)
    try:
        first = rotation.rotate_keys_step(services, operations=2)
        second = rotation.rotate_keys_step(services, operations=2)  # the end of the cycle: not clean
    finally:
        holder.release()
    assert first["remaining"] == {"old": 6} and not second["complete"] and second["cycle_finished"]
    third = rotation.rotate_keys_step(services, operations=2)  # a new cycle picks up what was left
    assert third["rotated"] == {"old": 6} and not third["complete"]
    assert rotation.rotate_keys_step(services, operations=2)["complete"]
    assert rotation.key_usage(services) == {"new": 3 * 6 + 2}
