"""Reading a local source in parts and sending them concurrently, with both digests from one ordered read.

Why this shape: a part's ``ChecksumSHA256`` must travel with the part, and S3 keeps no full-object SHA-256 for
multipart objects, so the calling thread reads the source once, in order, feeding each block to the part's hasher
and to the whole-file hasher. Only then is the part handed to a small thread pool, which sends it by re-reading
the same byte range in small blocks (never buffering the part). The server verifies every part against the digest
computed here, so what is stored is exactly what was hashed, even if the source changed in between.

Memory stays bounded by a few read blocks per part in flight (at most ``concurrency`` parts), not by the part size.
Reads are positional (``os.pread``) on plain files, so sender threads never share a file position; any other
source is read under a lock.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, BinaryIO

from shared.errors import StorageError

# Every read is at most this big, whoever asks (botocore's payload signer asks for 1 MiB): large enough that hashlib
# and pread release the GIL for nearly all the work, small enough that parts in flight cost little memory.
READ_BLOCK = 256 * 1024

# Exactly these types: a wrapper that merely exposes ``fileno()`` (GzipFile, a size-bounding proxy) would have its
# transformation skipped by positional reads of the descriptor.
_PREAD_TYPES: tuple[type, ...] = (io.FileIO, io.BufferedReader, io.BufferedRandom)


def _truncated(key: str) -> StorageError:
    return StorageError(f"source for {key} is shorter than its declared size", code="source_truncated")


def _regular_file_fd(src: BinaryIO) -> int | None:
    """The descriptor to ``pread`` from, or ``None`` when positional reads would not see what ``read`` sees."""
    if type(src) not in _PREAD_TYPES or not hasattr(os, "pread"):
        return None
    try:
        fd = src.fileno()
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        src.flush()  # bytes still in a BufferedRandom's write buffer are invisible to pread
    except (OSError, ValueError):
        return None
    return fd


class PartSource:
    """Positional reads of ``[0, size)`` of one source, safe to call from several threads at once."""

    def __init__(self, src: BinaryIO, key: str) -> None:
        self._src = src
        self._key = key
        self._fd = _regular_file_fd(src)
        self._lock = threading.Lock()

    @property
    def positional(self) -> bool:
        """True when reads go through ``os.pread`` (no lock, no shared file position)."""
        return self._fd is not None

    def read_at(self, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes at ``offset``; fewer only at the end of the source."""
        if self._fd is not None:
            return os.pread(self._fd, size, offset)
        with self._lock:
            self._src.seek(offset)
            return self._src.read(size)

    def digest(self, start: int, length: int, *also: Any) -> bytes:
        """SHA-256 of ``[start, start+length)``, feeding every hasher in ``also`` the same blocks in order."""
        hasher = hashlib.sha256()
        position, end = start, start + length
        while position < end:
            block = self.read_at(position, min(READ_BLOCK, end - position))
            if not block:
                raise _truncated(self._key)
            hasher.update(block)
            for other in also:
                other.update(block)
            position += len(block)
        return hasher.digest()

    def window(self, start: int, length: int) -> SourceWindow:
        return SourceWindow(self, start, length, self._key)


class SourceWindow(io.RawIOBase):
    """A seekable read-only window ``[start, start+length)`` of a ``PartSource``, so botocore can stream (and
    rewind for payload signing or a retry) one part without the part ever being held in memory."""

    def __init__(self, source: PartSource, start: int, length: int, key: str) -> None:
        super().__init__()
        self._source, self._start, self._length, self._key, self._pos = source, start, length, key, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def __len__(self) -> int:
        return self._length

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._length}[whence]
        self._pos = max(0, min(self._length, base + offset))
        return self._pos

    def read(self, size: int | None = -1) -> bytes:
        """Up to ``size`` bytes, at most ``READ_BLOCK`` (a raw stream may read short; every consumer loops until
        ``b""``); ``read()`` with no size still returns everything left, as callers of that form expect."""
        remaining = self._length - self._pos
        if size is None or size < 0:
            return b"".join(iter(lambda: self.read(READ_BLOCK), b""))
        size = min(size, remaining, READ_BLOCK)
        if size == 0:
            return b""
        data = self._source.read_at(self._start + self._pos, size)
        if not data:
            # Ending early would leave the server waiting for the declared Content-Length until a timeout.
            raise _truncated(self._key)
        self._pos += len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


@dataclass(frozen=True)
class SentPart:
    number: int  # 1-based, as S3 numbers parts
    sha256: bytes
    etag: str


#: Sends one part: ``(part number, body, its SHA-256) -> ETag``. Raises a ``shared.errors`` exception on failure.
SendPart = Callable[[int, SourceWindow, bytes], str]


def send_parts(
    source: PartSource, size: int, part_size: int, concurrency: int, send: SendPart
) -> tuple[list[SentPart], bytes]:
    """Send ``[0, size)`` in parts of ``part_size`` with at most ``concurrency`` in flight.

    Returns the parts in order and the SHA-256 of everything read. The first failure (a part's send, or reading
    the source) is raised once every part already in flight has finished, and no further part is started; so when
    this returns or raises, no request of this upload is still running and the caller may complete or abort it.
    """
    sends = _Sends(part_size, concurrency)
    whole = hashlib.sha256()
    try:
        for number, start, length in _spans(size, part_size):
            digest = source.digest(start, length, whole)  # in order: this thread alone feeds ``whole``
            sends.make_room()
            sends.submit(_send_one, send, number, source.window(start, length), digest)
        parts = sends.drain()
    finally:
        sends.pool.shutdown(wait=True, cancel_futures=True)
    return parts, whole.digest()


def _send_one(send: SendPart, number: int, body: SourceWindow, digest: bytes) -> SentPart:
    return SentPart(number=number, sha256=digest, etag=send(number, body, digest))


def _spans(size: int, part_size: int) -> Iterator[tuple[int, int, int]]:
    """``(part number, start, length)`` of each part of ``[0, size)``, numbered from 1."""
    for number, start in enumerate(range(0, size, part_size), start=1):
        yield number, start, min(part_size, size - start)


class _Sends:
    """The part sends of one upload on a pool of ``concurrency`` threads, at most that many in flight.

    What ``send_parts`` and ``send_stream`` share: a failed send is re-raised by ``make_room`` or ``drain``, so
    nothing more is submitted after it, and ``drain`` returns the parts in order. The caller shuts ``pool`` down
    with ``wait=True`` in a ``finally``, so no send outlives the call (whether queued ones may be cancelled is its
    decision: a streamed part must run to release its buffer).
    """

    def __init__(self, part_size: int, concurrency: int) -> None:
        if concurrency < 1 or part_size < 1:
            raise ValueError("concurrency and part_size must be positive")
        self.concurrency = concurrency
        self.pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="strongroom-part")
        self._sent: dict[int, SentPart] = {}
        self._in_flight: set[Future[SentPart]] = set()

    def make_room(self) -> None:
        """Collect finished sends, waiting for one when ``concurrency`` are in flight."""
        self._collect(FIRST_COMPLETED if len(self._in_flight) >= self.concurrency else None)

    def submit(self, fn: Callable[..., SentPart], *args: Any) -> None:
        self._in_flight.add(self.pool.submit(fn, *args))

    def drain(self) -> list[SentPart]:
        """Wait for every send; the parts in order."""
        while self._in_flight:
            self._collect(FIRST_EXCEPTION)
        return [self._sent[n] for n in sorted(self._sent)]

    def _collect(self, return_when: str | None) -> None:
        """Move finished sends into ``_sent`` (waiting first when ``return_when`` is given); re-raise a failed one."""
        if return_when is None:
            finished = {f for f in self._in_flight if f.done()}
        else:
            finished, _ = wait(self._in_flight, return_when=return_when)
        for future in finished:
            self._in_flight.discard(future)
            part = future.result()
            self._sent[part.number] = part


# --- parts produced on the fly (an encrypting generator), held in memory only while in flight --------------------


class BufferBudget:
    """At most ``limit`` bytes of upload buffers held at once, across every upload of one store.

    A streamed upload cannot re-read its source, so a part lives in memory from the moment it is produced until
    its send finished; several artifacts upload at once, so the bound has to be shared. A request larger than the
    whole budget is let through when nothing else is held (it cannot wait for space that will never exist).
    Holders never wait for each other while holding, so waiting here cannot deadlock.
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("limit must be positive")
        self.limit = limit
        self.used = 0
        self.peak = 0  # for tests and benchmarks: the most ever held at once
        self._condition = threading.Condition()

    def acquire(self, size: int) -> None:
        with self._condition:
            while self.used and self.used + size > self.limit:
                self._condition.wait()
            self.used += size
            self.peak = max(self.peak, self.used)

    def release(self, size: int) -> None:
        with self._condition:
            self.used -= size
            self._condition.notify_all()


class StreamReader:
    """Exact-length reads from an iterable of pieces of any sizes (an encrypting generator), consumed once, in
    order, by one thread."""

    def __init__(self, chunks: Iterable[bytes], key: str) -> None:
        self._source = iter(chunks)
        self._key = key
        self._view = memoryview(b"")

    def read_exact(self, size: int) -> bytes:
        """Exactly ``size`` bytes; ``source_truncated`` if the source ends first."""
        pieces: list[bytes | memoryview] = []
        wanted = size
        while wanted:
            if not self._view:
                piece = next(self._source, None)
                if piece is None:
                    raise _truncated(self._key)
                self._view = memoryview(piece)
                continue
            take = self._view[:wanted]
            pieces.append(take)
            self._view = self._view[len(take) :]
            wanted -= len(take)
        return b"".join(pieces)

    def expect_end(self) -> None:
        """Drive the source to its end (its own final checks run then); ``source_too_long`` if bytes remain."""
        if self._view or any(len(piece) for piece in self._source):
            raise StorageError(f"source for {self._key} is longer than its declared size", code="source_too_long")


#: Sends one in-memory part: ``(part number, body, its SHA-256) -> ETag``.
SendBuffer = Callable[[int, bytes, bytes], str]


def send_stream(
    reader: StreamReader, size: int, part_size: int, concurrency: int, budget: BufferBudget, send: SendBuffer
) -> tuple[list[SentPart], bytes]:
    """Send exactly ``size`` bytes read from ``reader`` in parts of ``part_size``, at most ``concurrency`` in flight.

    Each part is read (the source produces it: encryption runs here, in the calling thread), hashed once for its
    ``ChecksumSHA256`` and once into the whole-object SHA-256, handed to a sender thread and dropped when sent; the
    bytes are never read twice and never written anywhere else. Returns the parts in order and the whole digest.
    As with ``send_parts``, a failure (a send, or the source raising) is raised only once no send is running, and
    nothing more is started, so the caller may abort the upload at once.
    """
    sends = _Sends(part_size, concurrency)
    whole = hashlib.sha256()
    try:
        for number, start, length in _spans(size, part_size):
            sends.make_room()
            budget.acquire(length)
            try:
                body = reader.read_exact(length)
                if start + length == size:
                    reader.expect_end()  # before the last part leaves: a source that ran long sends nothing more
                digest = hashlib.sha256(body).digest()
                whole.update(body)
                sends.submit(_send_buffer, send, number, body, digest, budget)
            except BaseException:
                budget.release(length)
                raise
        parts = sends.drain()
    finally:
        # Never more sends submitted than workers, so none waits in a queue: each one runs and frees its buffer.
        sends.pool.shutdown(wait=True)
    return parts, whole.digest()


def _send_buffer(send: SendBuffer, number: int, body: bytes, digest: bytes, budget: BufferBudget) -> SentPart:
    try:
        return SentPart(number=number, sha256=digest, etag=send(number, body, digest))
    finally:
        budget.release(len(body))
