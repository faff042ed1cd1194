"""Cobblestone-256 artifact payloads (https://c2sp.org/chunked-encryption, AES-256-GCM + HKDF-Expand-SHA-512).

Why this format: browsers and other languages must decrypt artifacts straight from S3, stream them in constant
memory, and fetch only the chunks covering a byte range. Cobblestone gives all three with a public spec and
Wycheproof vectors, plus key commitment (a ciphertext opens under exactly one key and context).

Layout::

    salt (24) || commitment (32) || chunk_0 || chunk_1 || ... || chunk_n
    key || base_nonce || commitment = HKDF-Expand-SHA-512(prk = data key,
        info = "c2sp.org/chunked-encryption@v1+AEAD_AES_256_GCM" || 0x00 || salt || ctx, length = 76)
    chunk_i = AES-256-GCM(key, base_nonce XOR i (big-endian, 12 bytes), plaintext_i, aad = "")

Plaintext chunks are 16 KiB except the last, which is always shorter (possibly empty): a short chunk is the
end marker, so truncation and extension fail authentication. strongroom binds each payload to its place with
``ctx = "strongroom/v1|<operation id>|<artifact name>"``, so a ciphertext moved elsewhere fails the
commitment check.

Every decryption path yields plaintext only after its chunk authenticated, and raises IntegrityError
otherwise.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from shared.crypto.aead import Aead, AeadFactory, default_backend
from shared.errors import CryptoError, IntegrityError, ValidationFailed

__all__ = [
    "CHUNK_SIZE",
    "HEADER_SIZE",
    "Decryptor",
    "EncryptResult",
    "artifact_context",
    "authenticate_length",
    "ciphertext_range",
    "ciphertext_size",
    "decrypt_range",
    "decrypt_stream",
    "encrypt_file",
    "encrypt_stream",
    "plaintext_size",
]

KEY_SIZE = 32
NONCE_SIZE = 12
TAG_SIZE = 16
SALT_SIZE = 24
COMMITMENT_SIZE = 32
HEADER_SIZE = SALT_SIZE + COMMITMENT_SIZE
CHUNK_SIZE = 16 * 1024
SEALED_CHUNK_SIZE = CHUNK_SIZE + TAG_SIZE
MAX_CHUNKS = 1 << 38
AEAD_NAME = b"AEAD_AES_256_GCM"
_INFO_PREFIX = b"c2sp.org/chunked-encryption@v1+" + AEAD_NAME + b"\x00"
_READ_SIZE = 1024 * 1024

Fetch = Callable[[int, int], Iterable[bytes]]


def artifact_context(operation_id: str, name: str) -> bytes:
    """The Cobblestone context binding a payload to its operation and artifact name."""
    return f"strongroom/v1|{operation_id}|{name}".encode()


@dataclass(frozen=True)
class EncryptResult:
    plaintext_size: int
    ciphertext_size: int
    plaintext_sha256: str
    ciphertext_sha256: str


# --- sizes and offsets ---


def ciphertext_size(plaintext_size: int) -> int:
    """Exact encrypted size: the header, one tag per chunk, and the always-present short final chunk."""
    if plaintext_size < 0:
        raise ValueError("plaintext size must be non-negative")
    full, rest = divmod(plaintext_size, CHUNK_SIZE)
    return HEADER_SIZE + full * SEALED_CHUNK_SIZE + rest + TAG_SIZE


def plaintext_size(ciphertext_size: int) -> int:
    """Inverse of ciphertext_size; IntegrityError for lengths no honest encryption produces (truncation)."""
    if ciphertext_size < HEADER_SIZE + TAG_SIZE:
        raise IntegrityError("ciphertext is too short to be a Cobblestone payload (truncated)")
    full, rest = divmod(ciphertext_size - HEADER_SIZE, SEALED_CHUNK_SIZE)
    if rest < TAG_SIZE:
        raise IntegrityError("ciphertext length is impossible: the short final chunk is missing (truncated)")
    if full >= MAX_CHUNKS:
        raise IntegrityError("ciphertext exceeds the Cobblestone chunk limit")
    return full * CHUNK_SIZE + rest - TAG_SIZE


def _chunk_offset(index: int) -> int:
    return HEADER_SIZE + index * SEALED_CHUNK_SIZE


def _sealed_length(index: int, total_ciphertext: int) -> int:
    return min(SEALED_CHUNK_SIZE, total_ciphertext - _chunk_offset(index))


def _final_chunk(total_ciphertext: int) -> int:
    return (total_ciphertext - HEADER_SIZE) // SEALED_CHUNK_SIZE


def _covering_chunks(start: int, end: int, total_ciphertext: int) -> tuple[int, int]:
    last = end // CHUNK_SIZE
    if end == plaintext_size(total_ciphertext) - 1:
        last = _final_chunk(total_ciphertext)  # differs only when the final chunk is empty
    return start // CHUNK_SIZE, last


def ciphertext_range(start: int, end: int, ciphertext_size: int) -> tuple[int, int]:
    """Inclusive ciphertext bytes holding the chunks that cover plaintext ``[start, end]``.

    The range starts at 0 (so it includes the header) when the first covering chunk is chunk 0; otherwise the
    header (bytes 0..55) is a separate small fetch, as decrypt_range does. A range reaching the last plaintext
    byte always includes the final chunk (even an empty one), so reading to the end proves the length.
    """
    total = plaintext_size(ciphertext_size)
    if not 0 <= start <= end < total:
        raise ValidationFailed(
            f"byte range {start}-{end} is outside the artifact's {total} bytes", code="range_not_satisfiable"
        )
    first_chunk, last_chunk = _covering_chunks(start, end, ciphertext_size)
    first = 0 if first_chunk == 0 else _chunk_offset(first_chunk)
    last = _chunk_offset(last_chunk) + _sealed_length(last_chunk, ciphertext_size) - 1
    return first, last


# --- per-message keys ---


class _Message:
    """The derived AEAD key and base nonce of one payload; seals and opens chunk ``i`` with nonce base ^ i."""

    __slots__ = ("_aead", "_base")

    def __init__(self, aead: Aead, base_nonce: bytes) -> None:
        self._aead = aead
        self._base = int.from_bytes(base_nonce, "big")

    def _nonce(self, index: int) -> bytes:
        if index >= MAX_CHUNKS:
            raise IntegrityError("payload exceeds the Cobblestone chunk limit")
        return (self._base ^ index).to_bytes(NONCE_SIZE, "big")

    def seal(self, index: int, plaintext: bytes) -> bytes:
        return self._aead.seal(self._nonce(index), plaintext)

    def open(self, index: int, sealed: bytes, *, final: bool) -> bytes:
        if final and not TAG_SIZE <= len(sealed) < SEALED_CHUNK_SIZE:
            raise IntegrityError("payload truncated: the short final chunk is missing or incomplete")
        try:
            return self._aead.open(self._nonce(index), sealed)
        except IntegrityError:
            raise _chunk_failed(index) from None

    def open_into(self, index: int, sealed: memoryview, out: memoryview) -> None:
        """Open a full-size (never final) sealed chunk into ``out`` (CHUNK_SIZE bytes)."""
        try:
            self._aead.open_into(self._nonce(index), sealed, out)
        except IntegrityError:
            raise _chunk_failed(index) from None


def _chunk_failed(index: int) -> IntegrityError:
    return IntegrityError(
        f"chunk {index} failed authentication: the payload was modified, truncated, extended or reordered"
    )


def hkdf_expand_sha512(prk: bytes, info: bytes, length: int) -> bytes:
    """RFC 5869 HKDF-Expand with SHA-512 (no Extract: Cobblestone's input key is already uniform)."""
    return HKDFExpand(algorithm=hashes.SHA512(), length=length, info=info).derive(prk)


def _derive(key: bytes, ctx: bytes, salt: bytes) -> tuple[bytes, bytes, bytes]:
    okm = hkdf_expand_sha512(key, _INFO_PREFIX + salt + ctx, KEY_SIZE + NONCE_SIZE + COMMITMENT_SIZE)
    return okm[:KEY_SIZE], okm[KEY_SIZE : KEY_SIZE + NONCE_SIZE], okm[KEY_SIZE + NONCE_SIZE :]


def _open_header(key: bytes, ctx: bytes, header: bytes, backend: AeadFactory | None) -> _Message:
    if len(header) != HEADER_SIZE:
        raise IntegrityError("payload truncated inside its 56-byte header")
    aead_key, base_nonce, commitment = _derive(key, ctx, header[:SALT_SIZE])
    if not hmac.compare_digest(commitment, header[SALT_SIZE:]):
        raise IntegrityError(
            "key commitment mismatch: wrong data key or context (artifact moved to another operation or "
            "name?), or a modified header"
        )
    return _Message((backend or default_backend())(aead_key), base_nonce)


def _check_key(key: bytes, error: type[CryptoError]) -> None:
    if not isinstance(key, bytes | bytearray) or len(key) != KEY_SIZE:
        raise error(f"Cobblestone-256 data keys are {KEY_SIZE} bytes")


# --- encryption ---


def encrypt_stream(
    key: bytes,
    ctx: bytes,
    chunks: Iterable[bytes],
    *,
    backend: AeadFactory | None = None,
    salt: bytes | None = None,
) -> Iterator[bytes]:
    """Encrypt plaintext pieces of any sizes; yields the header, then one sealed chunk at a time.

    ``salt`` exists only for reproducible examples and tests: reusing a salt with the same key is forbidden.
    """
    _check_key(key, CryptoError)
    if salt is None:
        salt = os.urandom(SALT_SIZE)
    elif len(salt) != SALT_SIZE:
        raise CryptoError(f"Cobblestone salts are {SALT_SIZE} bytes")
    return _encrypt(bytes(key), ctx, chunks, backend, salt)


def _encrypt(
    key: bytes, ctx: bytes, chunks: Iterable[bytes], backend: AeadFactory | None, salt: bytes
) -> Iterator[bytes]:
    aead_key, base_nonce, commitment = _derive(key, ctx, salt)
    message = _Message((backend or default_backend())(aead_key), base_nonce)
    yield salt + commitment
    index = 0
    pending = bytearray()
    for piece in chunks:
        view = memoryview(piece)
        if pending:  # top up a partial chunk first
            take = CHUNK_SIZE - len(pending)
            pending += view[:take]
            view = view[take:]
            if len(pending) < CHUNK_SIZE:
                continue
            yield message.seal(index, bytes(pending))
            index += 1
            pending.clear()
        while len(view) >= CHUNK_SIZE:  # full chunks straight from the caller's buffer
            yield message.seal(index, bytes(view[:CHUNK_SIZE]))
            index += 1
            view = view[CHUNK_SIZE:]
        pending += view
    yield message.seal(index, bytes(pending))  # the short final chunk, empty when the size is a multiple


def _read_pieces(src: BinaryIO, size: int = _READ_SIZE) -> Iterator[bytes]:
    while piece := src.read(size):
        yield piece


def encrypt_file(
    key: bytes, ctx: bytes, src: BinaryIO, dst: BinaryIO, *, backend: AeadFactory | None = None
) -> EncryptResult:
    """Encrypt ``src`` into ``dst`` in constant memory, hashing both sides on the way (for checksums)."""
    plain_hash, sealed_hash = hashlib.sha256(), hashlib.sha256()
    plain_size = sealed_size = 0

    def counted() -> Iterator[bytes]:
        nonlocal plain_size
        for piece in _read_pieces(src):
            plain_hash.update(piece)
            plain_size += len(piece)
            yield piece

    for sealed in encrypt_stream(key, ctx, counted(), backend=backend):
        sealed_hash.update(sealed)
        sealed_size += len(sealed)
        dst.write(sealed)
    return EncryptResult(plain_size, sealed_size, plain_hash.hexdigest(), sealed_hash.hexdigest())


# --- decryption ---


class _StreamDecryptor(Iterator[bytes]):
    """Pull-based streaming decryption. Failures are sticky: after an error every next() raises it again, so a
    caller retrying reads can never mistake a failed payload for a clean end of message."""

    def __init__(self, key: bytes, ctx: bytes, chunks: Iterable[bytes], backend: AeadFactory | None) -> None:
        _check_key(key, IntegrityError)
        self._key, self._ctx, self._backend = bytes(key), ctx, backend
        self._source = iter(chunks)
        self._view = memoryview(b"")  # unread rest of the current input piece
        self._carry = bytearray()  # bytes of a record that straddles input pieces
        self._message: _Message | None = None
        self._index = 0
        self._done = False
        self._error: IntegrityError | None = None

    def __next__(self) -> bytes:
        if self._error is not None:
            raise IntegrityError(self._error.detail)
        if self._done:
            raise StopIteration
        try:
            return self._step()
        except IntegrityError as exc:
            self._error = exc
            self._key = b""
            raise

    def _read(self, size: int) -> bytes | None:
        """The next ``size`` bytes, sliced straight from the input when possible (large pieces are not
        re-buffered); None when the source ends first, leaving what was read in ``_carry``."""
        while True:
            if not self._carry and len(self._view) >= size:
                out = bytes(self._view[:size])
                self._view = self._view[size:]
                return out
            take = self._view[: size - len(self._carry)]
            self._carry += take
            self._view = self._view[len(take) :]
            if len(self._carry) == size:
                out = bytes(self._carry)
                self._carry.clear()
                return out
            piece = next(self._source, None)
            if piece is None:
                return None
            self._view = memoryview(piece)

    def _step(self) -> bytes:
        if self._message is None:
            header = self._read(HEADER_SIZE)
            self._message = _open_header(self._key, self._ctx, header or bytes(self._carry), self._backend)
        # A full-size sealed chunk is never the final one, so it can be opened as soon as it is read.
        sealed = self._read(SEALED_CHUNK_SIZE)
        if sealed is not None:
            plaintext = self._message.open(self._index, sealed, final=False)
            self._index += 1
            return plaintext
        plaintext = self._message.open(self._index, bytes(self._carry), final=True)
        self._carry.clear()
        self._done = True
        return plaintext


def decrypt_stream(
    key: bytes, ctx: bytes, chunks: Iterable[bytes], *, backend: AeadFactory | None = None
) -> Iterator[bytes]:
    """Decrypt a payload arriving as pieces of any sizes; yields authenticated plaintext, chunk by chunk.

    Raises IntegrityError (wrong key or context, modification, truncation, trailing data), and keeps
    raising it.
    The caller must treat plaintext already received as unverified until the iterator ends cleanly.
    """
    return _StreamDecryptor(key, ctx, chunks, backend)


class Decryptor:
    """Push-style streaming decryption for callers that receive the payload in pieces (a download): ``update``
    takes the next piece and returns the plaintext of every sealed chunk it completed, each authenticated before
    it is returned; ``finalize`` opens the short final chunk at the end of the payload.

    What ``update`` returns is a view of a buffer the next ``update`` overwrites: hash or write it before calling
    again. Full chunks are opened straight from the caller's piece into that buffer (``Aead.open_into``), so the
    bytes are neither re-buffered nor copied out chunk by chunk. Failures are sticky, like decrypt_stream's: after
    an IntegrityError every call raises it again. Nothing returned is proof of the payload's length or end
    until ``finalize`` returned.
    """

    def __init__(self, key: bytes, ctx: bytes, *, backend: AeadFactory | None = None) -> None:
        _check_key(key, IntegrityError)
        self._key, self._ctx, self._backend = bytes(key), ctx, backend
        self._message: _Message | None = None
        self._index = 0
        self._carry = bytearray()  # the start of a header or sealed chunk that straddles pieces
        self._out = bytearray()
        self._done = False
        self._error: IntegrityError | None = None

    def update(self, piece: bytes | bytearray | memoryview) -> memoryview:
        self._check()
        try:
            return self._update(memoryview(piece))
        except IntegrityError as exc:
            self._fail(exc)
            raise

    def finalize(self) -> bytes:
        """The final chunk's plaintext: the payload ended here, and its length is authenticated."""
        self._check()
        try:
            if self._message is None:
                self._message = _open_header(self._key, self._ctx, bytes(self._carry), self._backend)
                self._carry.clear()
            plaintext = self._message.open(self._index, bytes(self._carry), final=True)
        except IntegrityError as exc:
            self._fail(exc)
            raise
        self._carry.clear()
        self._done = True
        return plaintext

    def _check(self) -> None:
        if self._error is not None:
            raise IntegrityError(self._error.detail)
        if self._done:
            raise IntegrityError("data after the end of the payload")

    def _fail(self, exc: IntegrityError) -> None:
        self._error = exc
        self._key = b""
        self._out[:] = bytes(len(self._out))  # plaintext of chunks opened before the failure is never handed out

    def _update(self, view: memoryview) -> memoryview:
        carry = self._carry
        if self._message is None:
            take = view[: HEADER_SIZE - len(carry)]
            carry += take
            view = view[len(take) :]
            if len(carry) < HEADER_SIZE:
                return memoryview(b"")
            self._message = _open_header(self._key, self._ctx, bytes(carry), self._backend)
            carry.clear()
        chunks = (len(carry) + len(view)) // SEALED_CHUNK_SIZE
        if not chunks:
            carry += view
            return memoryview(b"")
        if len(self._out) < chunks * CHUNK_SIZE:
            self._out = bytearray(chunks * CHUNK_SIZE)  # a new buffer: views of the old one may still be held
        message, index, out, at = self._message, self._index, memoryview(self._out), 0
        # A full-size sealed chunk is never the final one, so it can be opened as soon as it is complete.
        if carry:
            take = view[: SEALED_CHUNK_SIZE - len(carry)]
            carry += take
            view = view[len(take) :]
            with memoryview(carry) as sealed:
                message.open_into(index, sealed, out[:CHUNK_SIZE])
            carry.clear()
            index, at = index + 1, CHUNK_SIZE
        while len(view) >= SEALED_CHUNK_SIZE:
            message.open_into(index, view[:SEALED_CHUNK_SIZE], out[at : at + CHUNK_SIZE])
            view = view[SEALED_CHUNK_SIZE:]
            index, at = index + 1, at + CHUNK_SIZE
        carry += view
        self._index = index
        return out[:at]


class _ExactReader:
    """Reads exact byte counts from an iterable of pieces (an HTTP response body)."""

    def __init__(self, pieces: Iterable[bytes]) -> None:
        self._source = iter(pieces)
        self._buffer = bytearray()

    def read(self, size: int) -> bytes:
        while len(self._buffer) < size:
            piece = next(self._source, None)
            if piece is None:
                raise IntegrityError("ranged fetch returned fewer bytes than requested (truncated payload)")
            self._buffer += piece
        with memoryview(self._buffer) as view:
            out = bytes(view[:size])
        del self._buffer[:size]
        return out

    def expect_end(self) -> None:
        if self._buffer or any(self._source):
            raise IntegrityError("ranged fetch returned more bytes than requested")


def _fetch_header(key: bytes, ctx: bytes, fetch: Fetch, backend: AeadFactory | None) -> _Message:
    reader = _ExactReader(fetch(0, HEADER_SIZE - 1))
    message = _open_header(key, ctx, reader.read(HEADER_SIZE), backend)
    reader.expect_end()
    return message


def decrypt_range(
    key: bytes,
    ctx: bytes,
    start: int,
    end: int,
    ciphertext_size: int,
    fetch: Fetch,
    *,
    backend: AeadFactory | None = None,
) -> Iterator[bytes]:
    """Yield exactly plaintext bytes ``start..end`` (inclusive), fetching only the chunks that cover them.

    ``fetch(first, last)`` returns ciphertext bytes first..last inclusive (an HTTP Range request). Each
    covering chunk is authenticated at its index with its exact length, so the final-chunk rules hold when it
    is included.
    A range that stops before the final chunk does not prove the payload's length: use authenticate_length.
    """
    _check_key(key, IntegrityError)
    first, last = ciphertext_range(start, end, ciphertext_size)
    return _decrypt_range(bytes(key), ctx, start, end, ciphertext_size, first, last, fetch, backend)


def _decrypt_range(
    key: bytes,
    ctx: bytes,
    start: int,
    end: int,
    total: int,
    first: int,
    last: int,
    fetch: Fetch,
    backend: AeadFactory | None,
) -> Iterator[bytes]:
    first_chunk, last_chunk = _covering_chunks(start, end, total)
    final_chunk = _final_chunk(total)
    if first == 0:  # chunk 0 is adjacent to the header: one request
        reader = _ExactReader(fetch(first, last))
        message = _open_header(key, ctx, reader.read(HEADER_SIZE), backend)
    else:
        message = _fetch_header(key, ctx, fetch, backend)
        reader = _ExactReader(fetch(first, last))
    for index in range(first_chunk, last_chunk + 1):
        sealed = reader.read(_sealed_length(index, total))
        plaintext = message.open(index, sealed, final=index == final_chunk)
        base = index * CHUNK_SIZE
        wanted = plaintext[max(start - base, 0) : end - base + 1]
        if wanted:  # an empty final chunk is authenticated but adds no bytes
            yield wanted
    reader.expect_end()


def authenticate_length(
    key: bytes, ctx: bytes, ciphertext_size: int, fetch: Fetch, *, backend: AeadFactory | None = None
) -> int:
    """Prove the payload's plaintext size by opening its final chunk (needed before seeking from the end)."""
    _check_key(key, IntegrityError)
    size = plaintext_size(ciphertext_size)
    message = _fetch_header(bytes(key), ctx, fetch, backend)
    final_chunk = size // CHUNK_SIZE
    offset = _chunk_offset(final_chunk)
    reader = _ExactReader(fetch(offset, ciphertext_size - 1))
    message.open(final_chunk, reader.read(ciphertext_size - offset), final=True)
    reader.expect_end()
    return size
