"""The per-process record cache (``shared.records``) against real Valkey and SeaweedFS: two ``OperationStore``s
stand for two processes (the API reading, the worker or another API replica writing). A cached record is never
served after a write or delete elsewhere, including while writes run concurrently with reads."""

from __future__ import annotations

import json
import threading
from datetime import timedelta
from typing import Any

import pytest
import redis

from api_service.views import collection_json
from shared import layout
from shared.crypto.keyring import Keyring
from shared.errors import NotFound
from shared.models import OperationRecord, utcnow
from shared.records import WRITING, OperationStore

pytestmark = pytest.mark.integration

DIGEST = "sha256:" + "0" * 64
WRAPPED = {"version": "x25519-xsalsa20-poly1305", "nonce": "n", "ephemPublicKey": "k", "ciphertext": "c"}


class CountingStore:
    """The real store, counting record reads (a cache hit must not read S3)."""

    def __init__(self, store: Any) -> None:
        self.store, self.reads = store, 0

    def get_bytes(self, key: str) -> bytes:
        self.reads += 1
        data: bytes = self.store.get_bytes(key)
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


@pytest.fixture
def pair(object_store: Any, redis_connection: redis.Redis) -> tuple[OperationStore, OperationStore]:
    keyring = Keyring.from_json(Keyring.generate_json())
    reader = OperationStore(CountingStore(object_store), keyring, redis_connection)  # type: ignore[arg-type]
    writer = OperationStore(object_store, keyring, redis_connection)
    return reader, writer


def artifact(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "size": 1,
        "content_type": "text/plain",
        "created_at": utcnow(),
        "checksum": DIGEST,
        "ciphertext_checksum": DIGEST,
        "ciphertext_size": 2,
        "encryption": {"wrapped_key": WRAPPED},
    }


def stored(writer: OperationStore, **changes: Any) -> OperationRecord:
    now = utcnow()
    record = OperationRecord(
        id=layout.new_operation_id("privacy-audit"),
        agent="privacy-audit",
        grantee="0x" + "ab" * 20,
        encryption_public_key="pk",
        created_at=now,
        expires_at=now + timedelta(days=1),
    ).evolve(**changes)
    writer.put(record)
    return record


def test_a_repeated_read_is_served_from_the_cache(pair: tuple[OperationStore, OperationStore]) -> None:
    reader, writer = pair
    record = stored(writer, status="running")
    assert reader.get(record.id) == record
    assert reader.get(record.id) == record
    assert reader.store.reads == 1  # type: ignore[attr-defined]


def test_a_cancel_elsewhere_is_seen_at_once(pair: tuple[OperationStore, OperationStore]) -> None:
    reader, writer = pair
    record = stored(writer, status="running")
    assert reader.get(record.id).status == "running"
    writer.update(record.id, lambda r: r.evolve(status="cancelled", finished_at=utcnow()))
    assert reader.get(record.id).status == "cancelled"


def test_a_deleted_artifact_is_never_served(pair: tuple[OperationStore, OperationStore]) -> None:
    reader, writer = pair
    record = stored(writer, status="succeeded", artifacts=[artifact("a.txt"), artifact("b.txt")])
    assert reader.get(record.id).artifact("a.txt") is not None
    writer.update(record.id, lambda r: r.evolve(artifacts=[a.model_dump() for a in r.artifacts if a.name != "a.txt"]))
    assert reader.get(record.id).artifact("a.txt") is None


def test_the_rendered_artifact_list_follows_the_record(pair: tuple[OperationStore, OperationStore]) -> None:
    """The API renders the list once per cached record object; a delete elsewhere must still show at once."""
    reader, writer = pair
    record = stored(writer, status="succeeded", artifacts=[artifact("a.txt"), artifact("b.txt")])
    names = lambda: [a["name"] for a in json.loads(collection_json(reader.get(record.id)))["artifacts"]]  # noqa: E731
    assert names() == names() == ["a.txt", "b.txt"]
    writer.update(record.id, lambda r: r.evolve(artifacts=[a.model_dump() for a in r.artifacts if a.name != "a.txt"]))
    assert names() == ["b.txt"]


def test_a_deleted_record_is_not_found(pair: tuple[OperationStore, OperationStore]) -> None:
    reader, writer = pair
    record = stored(writer, status="succeeded")
    reader.get(record.id)
    writer.delete_record(record.id)
    with pytest.raises(NotFound):
        reader.get(record.id)


def test_a_writer_that_died_mid_write_leaves_nothing_cacheable(
    pair: tuple[OperationStore, OperationStore], redis_connection: redis.Redis
) -> None:
    reader, writer = pair
    record = stored(writer, status="running")
    reader.get(record.id)
    redis_connection.set(layout.redis_record_version(record.id), WRITING, ex=60)  # a write began and never finished
    writer.put_sealed(layout.record_key(record.id), record.evolve(status="failed").model_dump_json().encode())
    assert reader.get(record.id).status == "failed"
    assert reader.get(record.id).status == "failed"


def test_concurrent_writes_never_leave_a_stale_copy(pair: tuple[OperationStore, OperationStore]) -> None:
    reader, writer = pair
    record = stored(writer, status="succeeded")
    stop = threading.Event()
    errors: list[BaseException] = []

    def read() -> None:
        try:
            while not stop.is_set():
                reader.get(record.id)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=read) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        for i in range(30):
            writer.update(record.id, lambda r, i=i: r.evolve(artifacts=[*r.artifacts, artifact(f"f{i}")]))
            assert reader.get(record.id).artifact(f"f{i}") is not None
        writer.update(record.id, lambda r: r.evolve(artifacts=[]))
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    assert not errors
    assert reader.get(record.id).artifacts == []
