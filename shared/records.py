"""Operation records: the only code that reads and writes ``record.json``, the agent input and the grantee index.

Records are encrypted with the server keyring; the S3 key is the AAD, so a blob copied to another operation does
not decrypt. Read-modify-write happens under a per-operation Redis lock (``update``), because the API (delete,
cancel) and the worker (status, artifacts) both change records. S3 PUTs replace whole objects atomically, so a
reader sees either the old record or the new one.

Decoded records are cached per process (``RecordCache``), validated by a version token in Redis rather than by
an S3 read: a hit costs one Redis GET instead of a GetObject, a decryption and a parse. Every write and delete
of a record (``put``, ``delete_record``) first sets the token to ``WRITING`` (nothing is cached while it stands)
and, once S3 has the new state, to a fresh random token. A reader caches what it read from S3 only under the
token it saw *before* the read, so a write landing after that read always changes the token again: a cached
record is never served after its record changed or vanished. A writer that dies mid-write leaves ``WRITING``,
which expires (``LOCK_TIMEOUT``); a missing token is replaced by a fresh one with SET NX, never reused, so a
Redis that lost its keys cannot validate an old entry either. Without Redis nothing is cached.

The same round trip that sets the fresh token adds the operation to ``REDIS_MONITOR_CHANGED``: the resource
monitor keeps running totals and re-reads only the operations noted there (plus a bounded reconciliation).
"""

from __future__ import annotations

import json
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import redis
import redis.asyncio as aioredis

from shared import layout
from shared.crypto.keyring import Keyring
from shared.errors import NotFound
from shared.locks import redis_lock
from shared.models import OperationRecord
from shared.storage import ObjectStore

LOCK_TIMEOUT = 60  # seconds a holder may keep the lock before it is considered dead
LOCK_WAIT = 15
WRITING = b"writing"  # the version token while a record write is in flight: nothing is cached meanwhile
TOKEN_TTL = 24 * 3600  # seconds an idle version token lives; a missing one is replaced by a fresh one
# Decoded records kept per process (least recently used dropped first). Each also holds the API's rendered status
# and list answers (OperationRecord.derived): with 50 artifacts about 40 KB per record, some 40 MB per API process.
CACHE_SIZE = 1024


def new_token() -> bytes:
    return secrets.token_hex(12).encode()


def usable_token(value: bytes | str | None) -> bytes | None:
    """The token a read may cache under, or ``None`` (no token yet, or a write in flight)."""
    if value is None:
        return None
    token = value.encode() if isinstance(value, str) else value
    return None if token == WRITING else token


class RecordCache:
    """Decoded records by operation id, each with the version token it was read under; bounded, thread-safe."""

    def __init__(self, size: int = CACHE_SIZE) -> None:
        self.size = size
        self._entries: OrderedDict[str, tuple[bytes, OperationRecord]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, operation_id: str, token: bytes | None) -> OperationRecord | None:
        if token is None:
            return None
        with self._lock:
            entry = self._entries.get(operation_id)
            if entry is None or entry[0] != token:
                return None
            self._entries.move_to_end(operation_id)
            return entry[1]

    def peek(self, operation_id: str) -> tuple[bytes, OperationRecord] | None:
        """The cached record and the token it was read under, whether or not that token still stands: only for a
        decision that is confirmed against the current token atomically (``shared.auth.replay.admit``'s ``then``)."""
        with self._lock:
            return self._entries.get(operation_id)

    def put(self, operation_id: str, token: bytes, record: OperationRecord) -> None:
        with self._lock:
            self._entries[operation_id] = (token, record)
            self._entries.move_to_end(operation_id)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)

    def forget(self, operation_id: str) -> None:
        with self._lock:
            self._entries.pop(operation_id, None)


async def aversion(client: aioredis.Redis, operation_id: str) -> bytes | None:
    """``OperationStore.version`` on the async client, so the API checks its cache without a thread hop."""
    key = layout.redis_record_version(operation_id)
    current = await client.get(key)
    if current is not None:
        return usable_token(current)
    fresh = new_token()
    return fresh if await client.set(key, fresh, nx=True, ex=TOKEN_TTL) else None


class OperationStore:
    def __init__(self, store: ObjectStore, keyring: Keyring, redis_client: redis.Redis | None = None) -> None:
        self.store = store
        self.keyring = keyring
        self.redis = redis_client
        self.cache = RecordCache()

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
        """The current record: from the cache when its version token still stands, else from S3."""
        token = self.version(operation_id)
        return self.cache.get(operation_id, token) or self.load(operation_id, token)

    def load(self, operation_id: str, token: bytes | None) -> OperationRecord:
        """Read the record from S3 and cache it under ``token``, the version token read *before* this call."""
        try:
            raw = self.get_sealed(layout.record_key(operation_id))
        except NotFound:
            raise NotFound("no such operation", code="operation_not_found") from None
        record = OperationRecord.model_validate_json(raw)
        if token is not None:
            self.cache.put(operation_id, token, record)
        return record

    def version(self, operation_id: str) -> bytes | None:
        """The record's version token (one created if none stands), or ``None`` while a write is in flight."""
        if self.redis is None:
            return None
        key = layout.redis_record_version(operation_id)
        current = self.redis.get(key)
        if current is not None:
            return usable_token(current)
        fresh = new_token()
        return fresh if self.redis.set(key, fresh, nx=True, ex=TOKEN_TTL) else None

    def put(self, record: OperationRecord) -> None:
        with self._writing(record.id):
            self.put_sealed(layout.record_key(record.id), record.model_dump_json().encode())

    def delete_record(self, operation_id: str) -> None:
        """Delete the record object; no process serves it from its cache afterwards."""
        with self._writing(operation_id):
            self.store.delete(layout.record_key(operation_id))

    @contextmanager
    def _writing(self, operation_id: str) -> Iterator[None]:
        """Invalidate every process's cached copy around a write (see the module docstring for why both steps)."""
        self.cache.forget(operation_id)
        if self.redis is None:
            yield
            return
        key = layout.redis_record_version(operation_id)
        self.redis.set(key, WRITING, ex=LOCK_TIMEOUT)
        yield
        # One round trip: the fresh token, the change noted for the resource monitor's running totals, and the
        # notification that wakes the API requests long-polling this operation (shared.status_feed). Here, every
        # write notifies: the worker's, a cancel or delete through the API, the monitor failing a dead run.
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(key, new_token(), ex=TOKEN_TTL)
        pipe.sadd(layout.REDIS_MONITOR_CHANGED, operation_id)
        pipe.publish(layout.REDIS_STATUS_CHANNEL, operation_id)
        pipe.execute()

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
