"""Two runs of one operation (second review, findings 5 and 6): a late record write and a redelivered copy.

Real Redis (lease, locks), in-memory S3, real agents; the stalls are injected where the review found the races.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

from shared import layout
from shared.crypto import cobblestone, keywrap
from shared.errors import StorageError
from shared.models import OperationRecord, utcnow
from shared.storage.memory import MemoryObjectStore
from tests.unit.worker.test_run import TEST_DB, actions, create, make_services, stored_keys
from worker_service.pipeline import lease
from worker_service.pipeline import run as pipeline
from worker_service.pipeline.retention import sweep_orphans
from worker_service.services import Services

pytestmark = pytest.mark.integration  # needs the session's real Redis


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(f"{redis_url.rsplit('/', 1)[0]}/{TEST_DB}")
    connection.flushdb()
    yield connection
    connection.flushdb()
    connection.close()


@pytest.fixture
def keypair() -> tuple[bytes, str]:
    return keywrap.generate_encryption_keypair()


def assert_named_objects_intact(services: Services, record: OperationRecord, secret: bytes) -> None:
    """What a reader relies on: every object the record names exists, matches its checksums and decrypts."""
    assert record.artifacts, "the record names no artifacts"
    for artifact in record.artifacts:
        for object_key in artifact.object_keys(record.id):
            assert services.store.exists(object_key), f"the record names a missing object: {object_key}"
        blob = services.store.get_bytes(artifact.object_key(record.id))
        assert artifact.ciphertext_checksum == "sha256:" + hashlib.sha256(blob).hexdigest()
        key = keywrap.unwrap_data_key(secret, artifact.encryption.wrapped_key.model_dump(), record.id, artifact.name)
        ctx = cobblestone.artifact_context(record.id, artifact.name)
        plaintext = b"".join(cobblestone.decrypt_stream(key.data_key, ctx, [blob]))
        assert artifact.checksum == "sha256:" + hashlib.sha256(plaintext).hexdigest()


def named_keys(record: OperationRecord) -> list[str]:
    return sorted(key for artifact in record.artifacts for key in artifact.object_keys(record.id))


def sweep_later(services: Services) -> int:
    """The hourly orphan sweep, run as if its age gate had passed for everything stored so far."""
    return sweep_orphans(services, now=datetime.now(UTC) + timedelta(hours=2))


# --- finding 5: a late record write ---------------------------------------------------------------------------------


def test_a_record_write_landing_after_a_reclaim_names_only_existing_objects(
    client: redis.Redis, tmp_path: Path, keypair: tuple[bytes, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """T1 passed its ownership check and sent the record PUT, which stalls past the lock and lease TTLs (the
    whole process stalls: its keep-alive thread too); T2 re-claims and runs to the end; T1's PUT lands last.

    Which run's record wins is not the point: no reader may ever be handed a record naming deleted objects. So no
    run deletes another's uploads; the age-gated orphan sweep removes the loser's objects later."""
    secret, public = keypair
    services = make_services(client, tmp_path)
    record = create(services, public, text="mail eve@example.com or call +44 20 7946 0958")
    put_record = services.records.put
    stalled: list[str] = []
    t2_final: list[OperationRecord | None] = []

    def stalling_put(value: OperationRecord) -> None:
        if value.status == "succeeded" and not stalled:  # T1's final write, past its ownership check
            stalled.append(value.artifacts[0].run_id or "")
            client.delete(layout.redis_run_lease(record.id), layout.redis_operation_lock(record.id))  # both lapse
            t2_final.append(pipeline.run_operation(services, record.id, token="t2"))
        put_record(value)  # the late write lands

    monkeypatch.setattr(services.records, "put", stalling_put)
    pipeline.run_operation(services, record.id, token="t1")

    t2 = t2_final[0]
    assert t2 is not None and t2.status == "succeeded"
    assert {a.run_id for a in t2.artifacts} != set(stalled)  # two real runs, each under its own keys
    final = services.records.get(record.id)
    assert final.status == "succeeded"
    assert_named_objects_intact(services, final, secret)

    # The losing run's uploads are orphans now: the sweep removes exactly those, never a named object.
    assert set(named_keys(final)) < set(stored_keys(services, final))
    assert sweep_later(services) > 0
    assert sorted(stored_keys(services, final)) == named_keys(final)
    assert_named_objects_intact(services, services.records.get(record.id), secret)


def test_the_lease_stays_fresh_until_the_record_is_written(
    client: redis.Redis, tmp_path: Path, keypair: tuple[bytes, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slow finish (waiting for the operation lock, a slow record PUT) must not let the lease lapse: a lapsed
    lease is what lets another claim start."""
    monkeypatch.setattr(lease, "LEASE_TTL", 1)
    monkeypatch.setattr(lease, "LEASE_REFRESH", 0.2)
    services = make_services(client, tmp_path)
    record = create(services, keypair[1], text="x")
    put_record = services.records.put
    seen: list[bytes | str | None] = []

    def slow_put(value: OperationRecord) -> None:
        if value.status == "succeeded":
            time.sleep(1.5)  # longer than the lease TTL
            seen.append(client.get(layout.redis_run_lease(record.id)))
        put_record(value)

    monkeypatch.setattr(services.records, "put", slow_put)
    final = pipeline.run_operation(services, record.id, token="t1")
    assert final is not None and final.status == "succeeded"
    assert len(seen) == 1 and seen[0] is not None and lease.as_text(seen[0]).startswith("t1/")
    assert not client.exists(layout.redis_run_lease(record.id))  # released once written


def test_a_reclaim_leaves_a_dead_runs_uploads_to_the_orphan_sweep(
    client: redis.Redis, tmp_path: Path, keypair: tuple[bytes, str]
) -> None:
    services = make_services(client, tmp_path)
    record = create(services, keypair[1], text="nothing")
    services.records.put(record.evolve(status="running", started_at=utcnow()))  # the dead worker's claim
    leftover = layout.artifact_key(record.id, "half-written.txt", layout.new_run_id())
    services.store.put_bytes(leftover, b"orphan")

    final = pipeline.run_operation(services, record.id, token="new")

    assert final is not None and final.status == "succeeded"
    assert services.store.exists(leftover)  # its writer might still name it: only the age-gated sweep decides
    assert sweep_orphans(services) == 0  # too young
    assert sweep_later(services) == 1
    assert not services.store.exists(leftover)
    assert sorted(stored_keys(services, record)) == named_keys(final)


# --- finding 6: a redelivered copy of the same task -----------------------------------------------------------------


def test_a_redelivered_copy_during_the_uploads_does_not_take_over(
    client: redis.Redis, tmp_path: Path, keypair: tuple[bytes, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The broker hands the same task id out again while the first delivery is still uploading: one run, the
    first keeps its lease, the copy is a no-op, the operation succeeds with intact artifacts."""
    monkeypatch.setattr(lease, "LEASE_REFRESH", 0.2)  # the copy sees the live run refresh quickly
    secret, public = keypair
    copy_result: list[OperationRecord | None] = []
    lease_during: list[bytes | str | None] = []

    first_upload = threading.Lock()  # artifacts upload concurrently: only the first one sends the copy in

    class UploadsWhileTheCopyArrives(MemoryObjectStore):
        def put_file(self, key: str, src: Any, **kwargs: Any) -> None:
            if first_upload.acquire(blocking=False):
                lease_key = layout.redis_run_lease(operation_id)
                lease_during.append(client.get(lease_key))
                copy = threading.Thread(
                    target=lambda: copy_result.append(pipeline.run_operation(services, operation_id, token="t1"))
                )
                copy.start()
                copy.join(timeout=30)
                assert not copy.is_alive(), "the copy never returned"
                lease_during.append(client.get(lease_key))
            super().put_file(key, src, **kwargs)

    services = make_services(client, tmp_path, store=UploadsWhileTheCopyArrives())
    record = create(services, public, text="mail eve@example.com")
    operation_id = record.id

    final = pipeline.run_operation(services, record.id, token="t1")

    assert copy_result == [None]  # the copy did nothing
    assert lease_during[0] is not None and lease_during[0] == lease_during[1]  # and stole nothing
    assert final is not None and final.status == "succeeded" and len(final.artifacts) == 2
    assert actions(client, record.id).count("operation.started") == 1  # one run
    assert_named_objects_intact(services, final, secret)
    assert sorted(stored_keys(services, record)) == named_keys(final)  # nothing else was uploaded


def test_a_copy_waits_out_a_dead_deliverys_lease_then_runs(
    client: redis.Redis, tmp_path: Path, keypair: tuple[bytes, str]
) -> None:
    """A worker killed mid-run leaves its lease for up to the TTL; the redelivered copy (same task id) sees it is
    not refreshed, waits for it to lapse and runs the operation instead of giving it up."""
    services = make_services(client, tmp_path)
    record = create(services, keypair[1], text="x")
    services.records.put(record.evolve(status="running", started_at=utcnow()))
    client.set(layout.redis_run_lease(record.id), f"t1/{layout.new_run_id()}", px=1500)  # nobody refreshes it

    final = pipeline.run_operation(services, record.id, token="t1")

    assert final is not None and final.status == "succeeded"


def test_a_live_lease_of_another_task_means_no_second_run(
    client: redis.Redis, tmp_path: Path, keypair: tuple[bytes, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lease, "LEASE_REFRESH", 0.2)
    services = make_services(client, tmp_path)
    record = create(services, keypair[1], text="x")
    services.records.put(record.evolve(status="running", started_at=utcnow()))
    other = lease.RunLease.new(client, record.id, "other-task")
    other.take()
    stop = threading.Event()

    def keep_refreshing() -> None:  # the other worker is alive
        while not stop.wait(0.1):
            other.refresh()

    refresher = threading.Thread(target=keep_refreshing)
    refresher.start()
    try:
        assert pipeline.run_operation(services, record.id, token="mine") is None
    finally:
        stop.set()
        refresher.join()
    assert services.records.get(record.id).status == "running"
    assert other.held()


def test_a_transient_error_releases_the_lease_before_the_retry(
    client: redis.Redis, tmp_path: Path, keypair: tuple[bytes, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Celery retries with the same task id; the retry must find no holder (or it would wait, or be a no-op)."""
    failures = [1]

    class Flaky(MemoryObjectStore):
        def put_file(self, key: str, src: Any, **kwargs: Any) -> None:
            if failures[0]:
                failures[0] -= 1
                raise StorageError("S3 hiccup")
            super().put_file(key, src, **kwargs)

    services = make_services(client, tmp_path, store=Flaky())
    record = create(services, keypair[1], text="x")
    with pytest.raises(StorageError):
        pipeline.run_operation(services, record.id, token="task-1")
    assert not client.exists(layout.redis_run_lease(record.id))

    final = pipeline.run_operation(services, record.id, token="task-1")  # Celery's retry keeps the task id
    assert final is not None and final.status == "succeeded" and len(final.artifacts) == 2
