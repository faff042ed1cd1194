"""The storage contract. Every method's docstring is the contract both backends honour.

Keys come from ``shared.layout`` only. Missing objects raise ``shared.errors.NotFound``; any other backend failure
raises ``StorageError`` (or ``Unavailable`` when the endpoint cannot be reached), never a boto exception.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import BinaryIO, Protocol


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    last_modified: datetime
    etag: str = ""
    checksum_sha256: str | None = None  # base64, as S3 reports it, when known


@dataclass(frozen=True)
class PendingUpload:
    """A multipart upload that was started and neither completed nor aborted (its parts use space)."""

    key: str
    upload_id: str
    initiated: datetime


@dataclass(frozen=True)
class PresignedUrl:
    url: str
    expires_at: datetime


class ObjectStore(Protocol):
    bucket: str
    # Presigning needs no network (fixed credentials: a few HMACs), so the API may call it on its event loop.
    presign_is_local: bool

    def ensure_bucket(self, *, cors_origins: tuple[str, ...] = (), expire_after_days: int | None = None) -> None:
        """Create the bucket if missing and apply CORS and the lifecycle backstop rule. Idempotent."""

    def ping(self) -> None:
        """Raise ``Unavailable`` unless the bucket is reachable with our credentials."""

    def put_bytes(
        self, key: str, data: bytes, *, content_type: str = "application/octet-stream", if_absent: bool = False
    ) -> None:
        """Store a small object in one PUT, with a SHA-256 checksum the server verifies.

        ``if_absent``: never replace an existing object (S3 ``If-None-Match: *``); ``Conflict`` (``object_exists``)
        if ``key`` exists. On a server that does not support conditional writes this is a plain PUT.
        """

    def put_file(
        self, key: str, src: BinaryIO, *, size: int, sha256_hex: str, content_type: str = "application/octet-stream"
    ) -> None:
        """Stream ``size`` bytes from ``src`` (at position 0) to ``key``; the server verifies ``sha256_hex``.

        Large files go multipart (each part checksummed); memory stays bounded by the part size.
        The object appears atomically when the upload completes; an aborted upload leaves nothing.
        """

    def put_stream(
        self, key: str, chunks: Iterable[bytes], *, size: int, content_type: str = "application/octet-stream"
    ) -> str:
        """Upload exactly ``size`` bytes produced by ``chunks`` to ``key`` in one pass; return their SHA-256 (hex).

        ``chunks`` is consumed once, in order, by the calling thread, and run to its end before the object
        appears; the bytes are hashed as they go (the server verifies the checksums) and never read again.
        Memory stays bounded by the part size, not the object size. An exception from ``chunks``, a source
        shorter (``source_truncated``) or longer (``source_too_long``) than ``size``, or a failed request stores
        nothing (and leaves no pending upload); an exception from ``chunks`` is re-raised as it is.
        """

    def get_bytes(self, key: str) -> bytes:
        """Read a small object whole."""

    def open_range(self, key: str, first: int | None = None, last: int | None = None) -> Iterator[bytes]:
        """Stream an object, or the inclusive byte range ``first..last`` of it, in chunks."""

    def head(self, key: str) -> ObjectInfo:
        """Size and checksum of an object; ``NotFound`` if absent."""

    def exists(self, key: str) -> bool: ...

    def list(self, prefix: str, *, start_after: str | None = None, limit: int | None = None) -> Iterator[ObjectInfo]:
        """Objects under ``prefix`` in ascending key order, after ``start_after``, at most ``limit``."""

    def list_prefixes(self, prefix: str) -> Iterator[str]:
        """The distinct "directories" directly under ``prefix`` (each ending in ``/``), ascending: one entry per
        directory however many objects it holds (S3's delimiter listing)."""

    def list_uploads(self, prefix: str) -> Iterator[PendingUpload]:
        """Multipart uploads under ``prefix`` that were neither completed nor aborted."""

    def abort_upload(self, upload: PendingUpload) -> None:
        """Abort a pending multipart upload and free its parts; an upload already gone is not an error."""

    def delete(self, key: str) -> None:
        """Delete one object; deleting a missing object is not an error (idempotent)."""

    def delete_many(self, keys: Sequence[str]) -> None:
        """Delete objects in batches of up to 1000; idempotent."""

    def presign_get(
        self, key: str, *, ttl: int, filename: str | None = None, content_type: str | None = None
    ) -> PresignedUrl:
        """A GET URL valid for ``ttl`` seconds; ``filename`` sets a safe ``Content-Disposition: attachment``."""
