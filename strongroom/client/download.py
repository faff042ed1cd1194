"""Streaming download and verification of one artifact: nothing reaches ``dest`` unless every check passed.

Steps, each in constant memory:

1. the ciphertext streams into ``.<dest>.<ciphertext checksum prefix>.part`` next to ``dest`` while being hashed;
   if that file already exists (an interrupted download of the same ciphertext), it is re-hashed and the rest is
   fetched with an HTTP ``Range`` request;
2. the SHA-256 of the ciphertext must equal ``ciphertext_checksum`` (a wrong or swapped object stops here);
3. the data key is unwrapped with the identity's X25519 key, bound to this operation id and artifact name, and
   the plaintext checksum sealed inside the wrap must equal the advertised ``checksum``;
4. Cobblestone-256 decryption (bound to the same operation and name) writes a second temp file while hashing the
   plaintext, which must again equal ``checksum``;
5. ``os.replace`` moves it onto ``dest`` atomically.

Any integrity failure removes both temp files, so a bad download can neither land nor be resumed.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from shared.crypto import cobblestone, keywrap
from shared.errors import IntegrityError, Unavailable
from strongroom.client.errors import ProtocolError

READ_SIZE = 1024 * 1024

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
) -> DownloadResult:
    """Fetch, verify, decrypt and atomically write one artifact to ``dest`` (see the module docstring)."""
    dest = Path(dest)
    part = partial_path(dest, ticket)
    resumed_from = _fetch_ciphertext(ticket, part, source, progress)
    try:
        data_key = _unwrap(ticket, secret_key)
        _decrypt_to(ticket, data_key, part, dest)
    except IntegrityError:
        part.unlink(missing_ok=True)
        raise
    part.unlink(missing_ok=True)
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


# --- steps ---


def _fetch_ciphertext(ticket: DownloadTicket, part: Path, source: RangeSource, progress: Progress | None) -> int:
    total = ticket.ciphertext_size
    hasher = hashlib.sha256()
    fd = os.open(part, os.O_RDWR | os.O_CREAT, 0o600)
    with os.fdopen(fd, "r+b") as out:
        have = _rehash(out, hasher, total)
        resumed_from = have
        if have < total:
            with source(have, None) as answer:
                if answer.object_size is not None and answer.object_size != total:
                    _discard(part)
                    raise IntegrityError(f"the stored object for {ticket.name!r} does not have the artifact's size")
                if answer.start != have:  # Range ignored: start over from the first byte
                    if answer.start != 0:
                        raise ProtocolError("the server answered a different byte range than requested")
                    out.seek(0)
                    out.truncate()
                    hasher, have, resumed_from = hashlib.sha256(), 0, 0
                for piece in answer.pieces:
                    if have + len(piece) > total:
                        _discard(part)
                        raise IntegrityError("the stored artifact is longer than its metadata says")
                    out.write(piece)
                    hasher.update(piece)
                    have += len(piece)
                    if progress:
                        progress(have, total)
        out.flush()
    if have != total:
        # A short answer: keep what arrived, the next attempt resumes from there.
        raise Unavailable(
            f"download of {ticket.name!r} stopped after {have} of {total} bytes; run it again to resume",
            code="download_incomplete",
        )
    if not hmac.compare_digest(hasher.hexdigest(), _hex(ticket.ciphertext_checksum)):
        _discard(part)
        raise IntegrityError(
            f"ciphertext checksum mismatch for {ticket.name!r}: the stored object is not this artifact"
        )
    return resumed_from


def _rehash(out: BinaryIO, hasher: Any, total: int) -> int:
    """Hash what an earlier attempt left; a partial longer than the whole object is stale and is dropped."""
    size = out.seek(0, os.SEEK_END)
    if size > total:
        out.seek(0)
        out.truncate()
        return 0
    out.seek(0)
    while piece := out.read(READ_SIZE):
        hasher.update(piece)
    return size


def _unwrap(ticket: DownloadTicket, secret_key: bytes) -> bytes:
    unwrapped = keywrap.unwrap_data_key(secret_key, ticket.wrapped_key, ticket.operation_id, ticket.name)
    if not hmac.compare_digest(_hex(unwrapped.sha256), _hex(ticket.checksum)):
        raise IntegrityError(f"the key wrap of {ticket.name!r} names a different checksum than its metadata")
    return bytes(unwrapped.data_key)


def _decrypt_to(ticket: DownloadTicket, data_key: bytes, part: Path, dest: Path) -> None:
    ctx = cobblestone.artifact_context(ticket.operation_id, ticket.name)
    hasher = hashlib.sha256()
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, part.open("rb") as src:
            for plain in cobblestone.decrypt_stream(data_key, ctx, iter(lambda: src.read(READ_SIZE), b"")):
                hasher.update(plain)
                out.write(plain)
            out.flush()
            os.fsync(out.fileno())
        if not hmac.compare_digest(hasher.hexdigest(), _hex(ticket.checksum)):
            raise IntegrityError(f"plaintext checksum mismatch for {ticket.name!r}")
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# --- helpers ---


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
