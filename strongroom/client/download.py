"""Streaming download and verification of one artifact: nothing reaches ``dest`` unless every check passed.

One pass over the bytes, in constant memory: the data key is unwrapped first (with the identity's X25519 key,
bound to this operation id and artifact name; the plaintext checksum sealed inside the wrap must equal the
advertised ``checksum``), then the ciphertext streams from the source through

1. the SHA-256 of the ciphertext (it must equal ``ciphertext_checksum``: a wrong or swapped object is refused),
2. Cobblestone-256 decryption, chunk by chunk (bound to the same operation and name; every chunk authenticates
   before its plaintext is used),
3. the SHA-256 of the plaintext (it must equal ``checksum`` again),

into a temp file beside ``dest``, which is fsynced and moved onto ``dest`` with ``os.replace`` only once all
three checks passed at the end of the stream. The calling thread only receives; a worker thread hashes,
decrypts and writes (SHA-256 and file writes, most of its time, release the GIL), fed about 1 MiB at a time
through a queue a few batches deep, so the socket keeps draining while earlier bytes are processed and memory
stays a few MiB. AES-GCM follows issue 4's choice (``aead.default_backend``: libsodium where the CPU has AES
instructions); ``backend=CryptographyAesGcm`` opens chunks with OpenSSL instead, about 3x faster here.

Resume: a download cut off midway leaves the ciphertext received so far in ``.<dest>.<checksum prefix>.part``
(rebuilt from the authenticated plaintext by re-sealing it under the payload's own salt and nonces, which gives
back exactly the bytes received, plus the few bytes of an unfinished chunk), and the next attempt feeds that
file through the same pass before asking for the rest with an HTTP ``Range`` request. Any integrity failure
removes both temp files, so a bad download can neither land nor be resumed.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import io
import itertools
import os
import queue
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from shared.crypto import cobblestone, keywrap
from shared.crypto.aead import AeadFactory, default_backend
from shared.errors import IntegrityError, Unavailable
from strongroom.client.errors import ProtocolError

READ_SIZE = 1024 * 1024
BATCH_SIZE = 1024 * 1024  # ciphertext handed to the worker thread at a time
QUEUE_DEPTH = 4  # batches waiting for it at most: memory stays a few MiB whatever the artifact's size

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class RangeAnswer:
    """One answer to a ranged fetch: where its body starts (0 when ``Range`` was ignored), the whole object's size
    when the server said (``Content-Length`` of a 200, ``Content-Range`` of a 206), and the body's pieces."""

    start: int
    object_size: int | None
    pieces: Iterable[bytes]


# ``source(first, last)`` opens ciphertext bytes ``first..last`` (inclusive; ``last=None`` means to the end).
RangeSource = Callable[[int, "int | None"], AbstractContextManager[RangeAnswer]]


@dataclass(frozen=True)
class DownloadTicket:
    """Everything needed to fetch and open one artifact (the API's JSON download answer plus the ids)."""

    operation_id: str
    name: str
    size: int
    content_type: str
    checksum: str
    ciphertext_checksum: str
    wrapped_key: dict[str, Any]
    url: str | None = None  # presigned S3 URL; None when the API proxies the bytes itself

    @property
    def ciphertext_size(self) -> int:
        return cobblestone.ciphertext_size(self.size)


@dataclass(frozen=True)
class DownloadResult:
    path: Path
    size: int
    checksum: str
    resumed_from: int  # ciphertext bytes already on disk from an earlier, interrupted attempt


def download_artifact(
    ticket: DownloadTicket,
    secret_key: bytes,
    dest: Path,
    source: RangeSource,
    *,
    progress: Progress | None = None,
    backend: AeadFactory | None = None,
) -> DownloadResult:
    """Fetch, verify, decrypt and atomically write one artifact to ``dest`` (see the module docstring).

    ``backend``: the AES-GCM implementation; by default ``default_backend()`` (pynacl where the CPU allows)."""
    dest = Path(dest)
    part = partial_path(dest, ticket)
    try:
        data_key = _unwrap(ticket, secret_key)
    except IntegrityError:
        _discard(part)
        raise
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb", buffering=0) as out:  # plaintext leaves in one write per received piece
            one_pass = _OnePass(ticket, data_key, out, backend or default_backend())
            try:
                resumed_from = one_pass.run(part, source, progress)
            except _Interrupted as cut:
                one_pass.keep_partial(part, tmp)  # what arrived, for the next attempt to resume from
                raise Unavailable(cut.detail, code="download_incomplete") from None
            os.fsync(out.fileno())
        os.replace(tmp, dest)
    except IntegrityError:
        _discard(part)
        _discard(tmp)
        raise
    except BaseException:
        _discard(tmp)
        raise
    _discard(part)
    return DownloadResult(dest, ticket.size, ticket.checksum, resumed_from)


def fetch_range(ticket: DownloadTicket, secret_key: bytes, start: int, end: int, source: RangeSource) -> bytes:
    """Plaintext bytes ``start..end`` (inclusive), fetching and authenticating only the chunks that hold them."""
    data_key = _unwrap(ticket, secret_key)
    ctx = cobblestone.artifact_context(ticket.operation_id, ticket.name)

    def fetch(first: int, last: int) -> Iterator[bytes]:
        with source(first, last) as answer:
            yield from _exact(answer.pieces, skip=first - answer.start, length=last - first + 1)

    pieces = cobblestone.decrypt_range(data_key, ctx, start, end, ticket.ciphertext_size, fetch)
    return b"".join(pieces)


def partial_path(dest: Path, ticket: DownloadTicket) -> Path:
    """Named after the ciphertext checksum, so a resume never appends to another artifact's bytes."""
    return dest.with_name(f".{dest.name}.{_hex(ticket.ciphertext_checksum)[:16]}.part")


# --- the pass ---


class _Interrupted(Exception):
    """The ciphertext stopped before its end (a dropped connection, a short answer): resumable."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class _OnePass:
    """Ciphertext pieces in, verified plaintext out: hashes both sides and decrypts as the bytes arrive, and
    remembers just enough (the header, the last few pieces) to rebuild the received ciphertext if it is cut."""

    def __init__(self, ticket: DownloadTicket, data_key: bytes, out: io.FileIO, backend: AeadFactory) -> None:
        self.ticket = ticket
        self.backend = backend
        self.total = ticket.ciphertext_size
        self.data_key = data_key
        self.ctx = cobblestone.artifact_context(ticket.operation_id, ticket.name)
        self.out = out
        self.have = 0  # ciphertext bytes received (from the partial file and the source)
        self.written = 0  # plaintext bytes written (authenticated chunks only)
        self.head = b""  # the payload's header (salt + commitment), once received
        self.recent: deque[bytes] = deque()  # the last pieces received: at least one sealed chunk's worth
        self.recent_size = 0

    def run(self, part: Path, source: RangeSource, progress: Progress | None) -> int:
        """Everything from the partial file (if any) and the source; returns where the source resumed."""
        on_disk = _partial_size(part, self.total)
        if on_disk == self.total:
            self._decrypt(_file_pieces(part))
            return on_disk
        with source(on_disk, None) as answer:
            if answer.object_size is not None and answer.object_size != self.total:
                raise IntegrityError(f"the stored object for {self.ticket.name!r} does not have the artifact's size")
            if answer.start != on_disk:  # Range ignored: start over from the first byte
                if answer.start != 0:
                    raise ProtocolError("the server answered a different byte range than requested")
                on_disk = 0
            earlier: Iterable[bytes] = _file_pieces(part) if on_disk else ()
            self._decrypt(itertools.chain(earlier, self._progress(answer.pieces, on_disk, progress)))
        return on_disk

    def _progress(self, pieces: Iterable[bytes], start: int, progress: Progress | None) -> Iterator[bytes]:
        if progress is None:
            yield from pieces
            return
        done = start
        for piece in pieces:
            yield piece
            done += len(piece)
            progress(done, self.total)

    def _decrypt(self, pieces: Iterable[bytes]) -> None:
        """Receive on this thread; hash, decrypt and write on a worker (SHA-256 and file writes release the GIL),
        so the socket keeps draining while earlier bytes are processed. The worker gets the pieces in order, about
        1 MiB at a time, with at most a few MiB waiting."""
        cipher_hash, plain_hash = hashlib.sha256(), hashlib.sha256()
        decryptor = cobblestone.Decryptor(self.data_key, self.ctx, backend=self.backend)

        def process(batch: list[bytes]) -> None:
            for piece in batch:
                cipher_hash.update(piece)
                plain = decryptor.update(piece)  # authenticated chunks only, in a buffer the next update reuses
                if plain:
                    plain_hash.update(plain)
                    self._write(plain)

        worker = _Worker(process)
        batch: list[bytes] = []
        size = 0
        try:
            for piece in self._received(pieces):
                batch.append(piece)
                size += len(piece)
                if size >= BATCH_SIZE:
                    worker.put(batch)
                    batch, size = [], 0
                    if worker.failed:
                        break
            worker.put(batch)
        except _Interrupted:
            worker.put(batch)
            worker.close()  # everything that arrived is written before keep_partial; a bad chunk still wins
            raise
        except BaseException:
            worker.stop()
            raise
        worker.close()
        final = decryptor.finalize()  # the stream ended where the ciphertext does: the length is authenticated
        plain_hash.update(final)
        self._write(memoryview(final))
        if not hmac.compare_digest(cipher_hash.hexdigest(), _hex(self.ticket.ciphertext_checksum)):
            raise IntegrityError(
                f"ciphertext checksum mismatch for {self.ticket.name!r}: the stored object is not this artifact"
            )
        if not hmac.compare_digest(plain_hash.hexdigest(), _hex(self.ticket.checksum)):
            raise IntegrityError(f"plaintext checksum mismatch for {self.ticket.name!r}")

    def _write(self, plain: memoryview) -> None:
        while plain:
            done = self.out.write(plain) or 0
            plain = plain[done:]
            self.written += done

    def _received(self, pieces: Iterable[bytes]) -> Iterator[bytes]:
        """The pieces, counted on their way to the worker; the decryptor must only see the stream end where the
        ciphertext does: a short stream is an interruption, never a (truncated) end of message."""
        total, recent, floor = self.total, self.recent, cobblestone.SEALED_CHUNK_SIZE + cobblestone.HEADER_SIZE
        try:
            for piece in pieces:
                if not piece:
                    continue
                if self.have + len(piece) > total:
                    raise IntegrityError("the stored artifact is longer than its metadata says")
                if len(self.head) < cobblestone.HEADER_SIZE:
                    self.head += piece[: cobblestone.HEADER_SIZE - len(self.head)]
                recent.append(piece)
                self.recent_size += len(piece)
                while self.recent_size - len(recent[0]) >= floor:
                    self.recent_size -= len(recent.popleft())
                self.have += len(piece)
                yield piece
        except Unavailable as exc:  # the connection dropped (the SDK's body reader says so)
            raise _Interrupted(exc.detail) from None
        if self.have < total:
            raise _Interrupted(
                f"download of {self.ticket.name!r} stopped after {self.have} of {total} bytes; run it again to resume"
            )

    def keep_partial(self, part: Path, plaintext: Path) -> None:
        """Write the ciphertext received so far to ``part``: the sealed form of every authenticated chunk (sealing
        it again under the payload's salt gives back exactly the bytes that arrived) and the unopened rest."""
        chunks = self.written // cobblestone.CHUNK_SIZE
        opened = cobblestone.HEADER_SIZE + chunks * cobblestone.SEALED_CHUNK_SIZE
        if len(self.head) < cobblestone.HEADER_SIZE:
            opened = 0  # not even the header arrived: keep the bytes as they are
        rest = self.have - opened
        tail = b"".join(self.recent)[-rest:] if rest else b""
        staging = part.with_name(part.name + ".new")
        try:
            with staging.open("wb") as out:
                if opened:
                    with plaintext.open("rb") as src:
                        out.writelines(self._sealed(src, chunks))
                out.write(tail)
            os.replace(staging, part)
        except OSError:
            _discard(staging)  # no resume then; the next attempt starts over

    def _sealed(self, src: BinaryIO, chunks: int) -> Iterator[bytes]:
        """Header and the first ``chunks`` sealed chunks, re-made from their plaintext (the final short chunk
        ``encrypt_stream`` adds is not part of them and is dropped)."""
        length = chunks * cobblestone.CHUNK_SIZE
        plain = iter(lambda: src.read(min(READ_SIZE, length - src.tell())), b"")
        sealed = cobblestone.encrypt_stream(self.data_key, self.ctx, plain, salt=self.head[: cobblestone.SALT_SIZE])
        for index, piece in enumerate(sealed):
            if index > chunks:
                return
            yield piece


def _partial_size(part: Path, total: int) -> int:
    """Bytes an earlier attempt left; a partial longer than the whole object is stale and is dropped."""
    try:
        size = part.stat().st_size
    except FileNotFoundError:
        return 0
    if size > total:
        _discard(part)
        return 0
    return size


def _file_pieces(path: Path) -> Iterator[bytes]:
    with path.open("rb") as src:
        while piece := src.read(READ_SIZE):
            yield piece


def _unwrap(ticket: DownloadTicket, secret_key: bytes) -> bytes:
    unwrapped = keywrap.unwrap_data_key(secret_key, ticket.wrapped_key, ticket.operation_id, ticket.name)
    if not hmac.compare_digest(_hex(unwrapped.sha256), _hex(ticket.checksum)):
        raise IntegrityError(f"the key wrap of {ticket.name!r} names a different checksum than its metadata")
    return bytes(unwrapped.data_key)


# --- helpers ---


class _Worker:
    """Runs ``process(batch)`` for every batch put, in order, on one thread. ``put`` blocks while QUEUE_DEPTH
    batches wait. The worker's first exception is kept (later batches are then dropped) and raised by ``close``."""

    def __init__(self, process: Callable[[list[bytes]], None]) -> None:
        self._queue: queue.Queue[list[bytes] | None] = queue.Queue(maxsize=QUEUE_DEPTH)
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(process,), name="strongroom-download", daemon=True)
        self._thread.start()

    @property
    def failed(self) -> bool:
        return self._failure is not None

    def put(self, batch: list[bytes]) -> None:
        if batch:
            self._queue.put(batch)

    def stop(self) -> None:
        """Wait until every batch put so far was processed (or dropped after a failure)."""
        self._queue.put(None)
        self._thread.join()

    def close(self) -> None:
        self.stop()
        if self._failure is not None:
            raise self._failure

    def _run(self, process: Callable[[list[bytes]], None]) -> None:
        while (batch := self._queue.get()) is not None:
            if self._failure is None:
                try:
                    process(batch)
                except BaseException as exc:  # handed to the caller's thread by close()
                    self._failure = exc


def _hex(checksum: str) -> str:
    value = checksum.removeprefix("sha256:").lower()
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise ProtocolError("a checksum is not sha256:<64 hex digits>")
    return value


def _discard(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


def _exact(pieces: Iterable[bytes], *, skip: int, length: int) -> Iterator[bytes]:
    """Drop ``skip`` leading bytes (a server that ignored Range) and stop after ``length`` bytes."""
    if skip < 0:
        raise ProtocolError("the server answered a different byte range than requested")
    for piece in pieces:
        if skip:
            dropped = min(skip, len(piece))
            piece = piece[dropped:]
            skip -= dropped
        if not piece:
            continue
        yield piece[:length]
        length -= min(length, len(piece))
        if length == 0:
            return
