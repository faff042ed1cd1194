"""Operation records: the only code that reads and writes ``record.json``, the agent input and the grantee index.

Records are encrypted with the server keyring; the S3 key is the AAD, so a blob copied to another operation does
not decrypt. Read-modify-write happens under a per-operation Redis lock (``update``), because the API (delete,
cancel) and the worker (status, artifacts) both change records. S3 PUTs replace whole objects atomically, so a
reader sees either the old record or the new one.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import redis

from shared import layout
from shared.crypto.keyring import Keyring
from shared.errors import NotFound
from shared.locks import redis_lock
from shared.models import OperationRecord
from shared.storage import ObjectStore

LOCK_TIMEOUT = 60  # seconds a holder may keep the lock before it is considered dead
LOCK_WAIT = 15


class OperationStore:
    def __init__(self, store: ObjectStore, keyring: Keyring, redis_client: redis.Redis | None = None) -> None:
        self.store = store
        self.keyring = keyring
        self.redis = redis_client

    # --- sealed blobs -------------------------------------------------------------------------------------

    def put_sealed(self, key: str, plaintext: bytes, *, if_absent: bool = False) -> None:
        """Seal and store; ``if_absent`` never replaces an existing object (``Conflict`` ``object_exists``)."""
        self.store.put_bytes(key, self.keyring.encrypt(plaintext, key.encode()), if_absent=if_absent)

    def get_sealed(self, key: str) -> bytes:
        return self.keyring.decrypt(self.store.get_bytes(key), key.encode())

    # --- records ------------------------------------------------------------------------------------------

    def create(self, record: OperationRecord, agent_input: dict[str, Any]) -> None:
        """Expiry marker first (a record never exists that cleanup cannot find; a marker without a record is
        dropped by cleanup), then input, record, and the grantee index last: an index entry always points at a
        readable record."""
        self.store.put_bytes(layout.expiry_key(record.expires_at, record.id), b"")
        self.put_sealed(layout.input_key(record.id), json.dumps(agent_input).encode())
        self.put(record)
        index = layout.grantee_index_key(record.grantee, int(record.created_at.timestamp()), record.id)
        self.store.put_bytes(index, b"")

    def get(self, operation_id: str) -> OperationRecord:
        try:
            raw = self.get_sealed(layout.record_key(operation_id))
        except NotFound:
            raise NotFound("no such operation", code="operation_not_found") from None
        return OperationRecord.model_validate_json(raw)

    def put(self, record: OperationRecord) -> None:
        self.put_sealed(layout.record_key(record.id), record.model_dump_json().encode())

    def read_input(self, operation_id: str) -> dict[str, Any]:
        value = json.loads(self.get_sealed(layout.input_key(operation_id)))
        return value if isinstance(value, dict) else {}

    def update(self, operation_id: str, change: Callable[[OperationRecord], OperationRecord]) -> OperationRecord:
        """Apply ``change`` to the current record under the operation lock and store the result."""
        with self.locked(operation_id):
            current = self.get(operation_id)
            updated = change(current)
            if updated != current:
                self.put(updated)
            return updated

    @contextmanager
    def locked(self, operation_id: str) -> Iterator[None]:
        if self.redis is None:
            yield
            return
        with redis_lock(
            self.redis,
            layout.redis_operation_lock(operation_id),
            timeout=LOCK_TIMEOUT,
            wait=LOCK_WAIT,
            busy_code="operation_busy",
        ):
            yield

    # --- listing ------------------------------------------------------------------------------------------

    def list_ids(self, grantee: str, *, cursor: str | None = None, limit: int = 50) -> tuple[list[str], str | None]:
        """A grantee's operation ids, newest first, and the cursor of the next page (``None`` at the end)."""
        prefix = layout.grantee_prefix(grantee)
        start_after = prefix + cursor if cursor else None
        keys = [info.key for info in self.store.list(prefix, start_after=start_after, limit=limit + 1)]
        page, more = keys[:limit], len(keys) > limit
        next_cursor = page[-1][len(prefix) :] if more and page else None
        return [layout.operation_id_from_index_key(key) for key in page], next_cursor

    def grantee_records(self, grantee: str) -> Iterator[OperationRecord]:
        """Every stored record of ``grantee`` (to rebuild its quota counters from the truth)."""
        cursor: str | None = None
        while True:
            ids, cursor = self.list_ids(grantee, cursor=cursor, limit=1000)
            for operation_id in ids:
                try:
                    yield self.get(operation_id)
                except NotFound:
                    continue  # deleted since it was listed
            if cursor is None:
                return

    def all_ids(self) -> Iterator[str]:
        """Every operation id in the bucket (for sweeps): walks the record objects."""
        for info in self.store.list(layout.OPERATIONS):
            if info.key.endswith("/record.json"):
                yield info.key[len(layout.OPERATIONS) :].split("/", 1)[0]

    def delete_index(self, record: OperationRecord) -> None:
        self.store.delete(layout.grantee_index_key(record.grantee, int(record.created_at.timestamp()), record.id))

    def mark_expiry(self, record: OperationRecord) -> None:
        """(Re)write the expiry marker of ``record`` (the index migration, a marker found in the wrong hour)."""
        self.store.put_bytes(layout.expiry_key(record.expires_at, record.id), b"")

    def delete_expiry_marker(self, record: OperationRecord) -> None:
        """Drop the expiry marker, after the record itself is gone (so a crash in between is found again)."""
        self.store.delete(layout.expiry_key(record.expires_at, record.id))
