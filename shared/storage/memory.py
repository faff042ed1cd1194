"""``ObjectStore`` in process memory, for fast unit tests of the code above the storage layer.

A real implementation of the same contract, not a mock: checksums are verified, ranges, listing order,
``start_after`` and ``NotFound`` behave as on S3, and a failed ``put_file`` leaves nothing behind. It holds every
byte in RAM and presigns ``memory://`` URLs nothing can fetch: never use it outside tests and development.
"""

from __future__ import annotations

import bisect
import builtins
import hashlib
import hmac
import io
import threading
from base64 import b64encode
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import BinaryIO
from urllib.parse import quote, urlencode

from shared.errors import Conflict, NotFound, StorageError, Unavailable, ValidationFailed
from shared.storage.base import ObjectInfo, PendingUpload, PresignedUrl
from shared.storage.s3 import READ_CHUNK, content_disposition


@dataclass(frozen=True)
class _Object:
    data: bytes
    content_type: str
    last_modified: datetime
    checksum_sha256: str


class MemoryObjectStore:
    """``ObjectStore`` backed by a dict; safe to share between threads."""

    def __init__(self, bucket: str = "strongroom", *, bucket_exists: bool = True) -> None:
        self.bucket = bucket
        self.bucket_exists = bucket_exists
        self.cors_origins: tuple[str, ...] = ()
        self.expire_after_days: int | None = None
        self.available = True  # tests flip this to exercise ``Unavailable`` paths
        self.presign_is_local = True
        self._objects: dict[str, _Object] = {}
        self._keys: list[str] = []  # sorted, for listing by key order
        self._lock = threading.Lock()

    def ensure_bucket(self, *, cors_origins: tuple[str, ...] = (), expire_after_days: int | None = None) -> None:
        """Create the bucket if missing and apply CORS and the lifecycle backstop rule. Idempotent."""
        self._check_available()
        self.bucket_exists = True
        self.cors_origins = tuple(cors_origins)
        self.expire_after_days = expire_after_days

    def ping(self) -> None:
        """Raise ``Unavailable`` unless the bucket is reachable with our credentials."""
        self._check_available()
        if not self.bucket_exists:
            raise Unavailable("S3 bucket not reachable: bucket does not exist")

    def put_bytes(
        self, key: str, data: bytes, *, content_type: str = "application/octet-stream", if_absent: bool = False
    ) -> None:
        """Store a small object in one PUT, with a SHA-256 checksum the server verifies.

        ``if_absent``: never replace an existing object (S3 ``If-None-Match: *``); ``Conflict`` (``object_exists``)
        if ``key`` exists. On a server that does not support conditional writes this is a plain PUT.
        """
        self._store(key, bytes(data), content_type, if_absent=if_absent)

    def put_file(
        self, key: str, src: BinaryIO, *, size: int, sha256_hex: str, content_type: str = "application/octet-stream"
    ) -> None:
        """Stream ``size`` bytes from ``src`` (at position 0) to ``key``; the server verifies ``sha256_hex``.

        The object appears atomically only once every byte was read and the checksum matched.
        """
        try:
            expected = bytes.fromhex(sha256_hex)
        except ValueError:
            raise ValidationFailed("sha256_hex is not hexadecimal", code="checksum_invalid") from None
        src.seek(0)
        chunks: list[bytes] = []
        remaining = size
        while remaining > 0:
            chunk = src.read(min(READ_CHUNK, remaining))
            if not chunk:
                raise StorageError(f"source for {key} is shorter than its declared size", code="source_truncated")
            chunks.append(chunk)
            remaining -= len(chunk)
        data = b"".join(chunks)
        if not hmac.compare_digest(hashlib.sha256(data).digest(), expected):
            raise StorageError(f"{key}: source does not match its SHA-256", code="checksum_mismatch")
        self._store(key, data, content_type)

    def put_stream(
        self, key: str, chunks: Iterable[bytes], *, size: int, content_type: str = "application/octet-stream"
    ) -> str:
        """Upload exactly ``size`` bytes produced by ``chunks`` to ``key`` in one pass; return their SHA-256 (hex).

        Here the whole object is gathered (this store keeps every byte in RAM anyway), then stored through
        ``put_file``, so a subclass that intercepts ``put_file`` sees streamed uploads too.
        """
        data = bytearray()
        for piece in chunks:
            data += piece
            if len(data) > size:
                raise StorageError(f"source for {key} is longer than its declared size", code="source_too_long")
        if len(data) < size:
            raise StorageError(f"source for {key} is shorter than its declared size", code="source_truncated")
        digest = hashlib.sha256(data).hexdigest()
        self.put_file(key, io.BytesIO(data), size=size, sha256_hex=digest, content_type=content_type)
        return digest

    def get_bytes(self, key: str) -> bytes:
        """Read a small object whole."""
        return self._get(key).data

    def open_range(self, key: str, first: int | None = None, last: int | None = None) -> Iterator[bytes]:
        """Stream an object, or the inclusive byte range ``first..last`` of it, in chunks."""
        data = self._get(key).data
        start = first or 0
        if start < 0 or (last is not None and (last < 0 or last < start)):
            raise ValidationFailed("invalid byte range", code="range_not_satisfiable")
        if (first or last is not None) and start >= len(data):
            raise ValidationFailed(f"requested range is outside {key}", code="range_not_satisfiable")
        end = len(data) if last is None else min(last + 1, len(data))
        view = data[start:end]
        return iter([view[i : i + READ_CHUNK] for i in range(0, len(view), READ_CHUNK)])

    def head(self, key: str) -> ObjectInfo:
        """Size and checksum of an object; ``NotFound`` if absent."""
        obj = self._get(key)
        return self._info(key, obj, with_checksum=True)

    def exists(self, key: str) -> bool:
        try:
            self._get(key)
        except NotFound:
            return False
        return True

    def list(self, prefix: str, *, start_after: str | None = None, limit: int | None = None) -> Iterator[ObjectInfo]:
        """Objects under ``prefix`` in ascending key order, after ``start_after``, at most ``limit``."""
        self._check_bucket()
        with self._lock:
            start = bisect.bisect_left(self._keys, prefix)
            if start_after is not None:
                start = max(start, bisect.bisect_right(self._keys, start_after))
            found: builtins.list[ObjectInfo] = []
            for key in self._keys[start:]:
                if not key.startswith(prefix) or (limit is not None and len(found) >= limit):
                    break
                found.append(self._info(key, self._objects[key], with_checksum=False))
        return iter(found)

    def list_prefixes(self, prefix: str) -> Iterator[str]:
        """The distinct "directories" directly under ``prefix``, ascending."""
        self._check_bucket()
        with self._lock:
            start = bisect.bisect_left(self._keys, prefix)
            found: builtins.list[str] = []
            for key in self._keys[start:]:
                if not key.startswith(prefix):
                    break
                rest = key[len(prefix) :]
                if "/" in rest:
                    directory = prefix + rest.split("/", 1)[0] + "/"
                    if not found or found[-1] != directory:
                        found.append(directory)
        return iter(found)

    def list_uploads(self, prefix: str) -> Iterator[PendingUpload]:
        """Multipart uploads under ``prefix`` that were neither completed nor aborted."""
        self._check_bucket()
        return iter([])  # ``put_file`` here is all or nothing: no upload is ever left pending

    def abort_upload(self, upload: PendingUpload) -> None:
        """Abort a pending multipart upload and free its parts; an upload already gone is not an error."""
        self._check_bucket()

    def delete(self, key: str) -> None:
        """Delete one object; deleting a missing object is not an error (idempotent)."""
        self._check_bucket()
        with self._lock:
            if self._objects.pop(key, None) is not None:
                self._keys.pop(bisect.bisect_left(self._keys, key))

    def delete_many(self, keys: Sequence[str]) -> None:
        """Delete objects in batches of up to 1000; idempotent."""
        for key in keys:
            self.delete(key)

    def presign_get(
        self, key: str, *, ttl: int, filename: str | None = None, content_type: str | None = None
    ) -> PresignedUrl:
        """A GET URL valid for ``ttl`` seconds; ``filename`` sets a safe ``Content-Disposition: attachment``."""
        self._check_bucket()
        expires_at = datetime.now(UTC) + timedelta(seconds=ttl)
        query = {"expires": str(int(expires_at.timestamp()))}
        if filename is not None:
            query["response-content-disposition"] = content_disposition(filename)
        if content_type is not None:
            query["response-content-type"] = content_type
        url = f"memory://{self.bucket}/{quote(key)}?{urlencode(query, quote_via=quote)}"
        return PresignedUrl(url=url, expires_at=expires_at)

    # --- internals ------------------------------------------------------------------------------------

    def _check_available(self) -> None:
        if not self.available:
            raise Unavailable("S3 endpoint unreachable (memory store switched off)")

    def _check_bucket(self) -> None:
        self._check_available()
        if not self.bucket_exists:
            raise StorageError("bucket does not exist (run `strongroom init` to create it)", code="bucket_missing")

    def _store(self, key: str, data: bytes, content_type: str, *, if_absent: bool = False) -> None:
        self._check_bucket()
        checksum = b64encode(hashlib.sha256(data).digest()).decode("ascii")
        obj = _Object(data, content_type, datetime.now(UTC), checksum)
        with self._lock:
            if if_absent and key in self._objects:
                raise Conflict(f"object {key} already exists", code="object_exists")
            if key not in self._objects:
                bisect.insort(self._keys, key)
            self._objects[key] = obj

    def _get(self, key: str) -> _Object:
        self._check_bucket()
        with self._lock:
            obj = self._objects.get(key)
        if obj is None:
            raise NotFound(f"object {key} not found")
        return obj

    @staticmethod
    def _info(key: str, obj: _Object, *, with_checksum: bool) -> ObjectInfo:
        return ObjectInfo(
            key=key,
            size=len(obj.data),
            last_modified=obj.last_modified,
            etag=hashlib.md5(obj.data, usedforsecurity=False).hexdigest(),
            checksum_sha256=obj.checksum_sha256 if with_checksum else None,
        )
