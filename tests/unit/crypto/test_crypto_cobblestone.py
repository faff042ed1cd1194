"""Cobblestone-256 behaviour: round-trips at every chunk boundary, ranges, file helper, and tampering."""

from __future__ import annotations

import hashlib
import io
import itertools
import random
from collections.abc import Callable, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.crypto import cobblestone as cs
from shared.crypto import keywrap
from shared.errors import CryptoError, IntegrityError, ValidationFailed

pytestmark = pytest.mark.unit

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
CTX = cs.artifact_context("op_1", "report.pdf")
CHUNK = cs.CHUNK_SIZE
SEALED = CHUNK + 16
BOUNDARY_SIZES = [0, 1, 15, 16, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK - 1, 2 * CHUNK, 2 * CHUNK + 1, 3 * CHUNK]
sizes = st.one_of(st.sampled_from(BOUNDARY_SIZES), st.integers(0, 4 * CHUNK + 100))


def _data(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def _split(data: bytes, cuts: list[int]) -> Iterator[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    for a, b in itertools.pairwise(points):
        yield data[a:b]


def _encrypt(data: bytes, key: bytes = KEY, ctx: bytes = CTX) -> bytes:
    return b"".join(cs.encrypt_stream(key, ctx, [data]))


def _decrypt(ct: bytes, key: bytes = KEY, ctx: bytes = CTX) -> bytes:
    return b"".join(cs.decrypt_stream(key, ctx, [ct]))


def _chunks(ct: bytes) -> tuple[bytes, list[bytes]]:
    body = ct[cs.HEADER_SIZE :]
    return ct[: cs.HEADER_SIZE], [body[i : i + SEALED] for i in range(0, len(body), SEALED)]


def _fetcher(ct: bytes, calls: list[tuple[int, int]] | None = None) -> Callable[[int, int], Iterator[bytes]]:
    def fetch(first: int, last: int) -> Iterator[bytes]:
        if calls is not None:
            calls.append((first, last))
        data = ct[first : last + 1]
        return iter([data[: len(data) // 2], data[len(data) // 2 :]])

    return fetch


def test_artifact_context() -> None:
    assert cs.artifact_context("op_1", "résumé.pdf") == "strongroom/v1|op_1|résumé.pdf".encode()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(size=sizes, in_cuts=st.lists(st.integers(0, 10**6), max_size=8), out_cuts=st.lists(st.integers(0, 10**6)))
def test_round_trip_with_any_chunking(size: int, in_cuts: list[int], out_cuts: list[int]) -> None:
    data = _data(size, size)
    ct = b"".join(cs.encrypt_stream(KEY, CTX, _split(data, in_cuts)))
    assert len(ct) == cs.ciphertext_size(size)
    assert cs.plaintext_size(len(ct)) == size
    pieces = list(cs.decrypt_stream(KEY, CTX, _split(ct, out_cuts)))
    assert b"".join(pieces) == data
    assert all(len(p) <= CHUNK for p in pieces)


@settings(max_examples=80, deadline=None)
@given(size=st.integers(1, 4 * CHUNK + 100), a=st.integers(0, 10**6), b=st.integers(0, 10**6))
def test_decrypt_range_matches_slice_and_fetches_only_covering_chunks(size: int, a: int, b: int) -> None:
    data = _data(size, size)
    ct = _encrypt(data)
    start, end = sorted((a % size, b % size))
    calls: list[tuple[int, int]] = []
    got = b"".join(cs.decrypt_range(KEY, CTX, start, end, len(ct), _fetcher(ct, calls)))
    assert got == data[start : end + 1]
    first, last = cs.ciphertext_range(start, end, len(ct))
    assert calls[-1] == (first, last)
    assert last - first + 1 <= cs.HEADER_SIZE + (end // CHUNK - start // CHUNK + 2) * SEALED
    if first != 0:
        assert calls == [(0, cs.HEADER_SIZE - 1), (first, last)]


def test_ciphertext_range_examples() -> None:
    size = cs.ciphertext_size(3 * CHUNK + 10)
    assert cs.ciphertext_range(0, 0, size) == (0, cs.HEADER_SIZE + SEALED - 1)
    assert cs.ciphertext_range(CHUNK, CHUNK, size) == (cs.HEADER_SIZE + SEALED, cs.HEADER_SIZE + 2 * SEALED - 1)
    # The last plaintext byte pulls in the short final chunk...
    assert cs.ciphertext_range(3 * CHUNK + 9, 3 * CHUNK + 9, size)[1] == size - 1
    # ...and, when the final chunk is empty, that empty chunk too (reading to the end proves the length).
    exact = cs.ciphertext_size(2 * CHUNK)
    assert cs.ciphertext_range(CHUNK, 2 * CHUNK - 1, exact) == (cs.HEADER_SIZE + SEALED, exact - 1)
    for bad in [(-1, 0), (5, 4), (0, 3 * CHUNK + 10)]:
        with pytest.raises(ValidationFailed):
            cs.ciphertext_range(*bad, size)


@pytest.mark.parametrize("size", [0, 1, 16, cs.HEADER_SIZE + 15, cs.HEADER_SIZE + SEALED, cs.HEADER_SIZE + SEALED + 15])
def test_impossible_ciphertext_sizes(size: int) -> None:
    with pytest.raises(IntegrityError, match="truncated"):
        cs.plaintext_size(size)


@pytest.mark.parametrize("size", BOUNDARY_SIZES)
def test_encrypt_file_reports_sizes_and_hashes(size: int) -> None:
    data = _data(size)
    dst = io.BytesIO()
    result = cs.encrypt_file(KEY, CTX, io.BytesIO(data), dst)
    ct = dst.getvalue()
    assert result.plaintext_size == size and result.ciphertext_size == len(ct) == cs.ciphertext_size(size)
    assert result.plaintext_sha256 == hashlib.sha256(data).hexdigest()
    assert result.ciphertext_sha256 == hashlib.sha256(ct).hexdigest()
    assert _decrypt(ct) == data


def test_fresh_salt_per_encryption() -> None:
    assert _encrypt(b"same") != _encrypt(b"same")


def test_bad_keys_and_salts() -> None:
    with pytest.raises(CryptoError):
        cs.encrypt_stream(b"short", CTX, [])
    with pytest.raises(CryptoError):
        cs.encrypt_stream(KEY, CTX, [], salt=b"short")
    with pytest.raises(IntegrityError):
        cs.decrypt_stream(KEY + b"x", CTX, [])
    with pytest.raises(IntegrityError):
        cs.decrypt_range(b"", CTX, 0, 0, cs.ciphertext_size(1), _fetcher(b""))


# --- tampering -------------------------------------------------------------------------------------------------

DATA = _data(3 * CHUNK + 100, 7)
CT = _encrypt(DATA)
HEADER, CHUNKS = _chunks(CT)


def _fails(ct: bytes, match: str, key: bytes = KEY, ctx: bytes = CTX) -> bytes:
    """Assert decryption fails with ``match``; return the plaintext the stream let through first."""
    produced = bytearray()
    with pytest.raises(IntegrityError, match=match):
        for piece in cs.decrypt_stream(key, ctx, [ct[i : i + 5000] for i in range(0, len(ct), 5000)]):
            produced += piece
    assert DATA.startswith(produced)  # only authenticated prefix bytes, never altered ones
    pushed = _push_until_failure(cs.Decryptor(key, ctx), [ct[i : i + 5000] for i in range(0, len(ct), 5000)], match)
    assert DATA.startswith(pushed)
    return bytes(produced)


def _push_until_failure(decryptor: cs.Decryptor, pieces: list[bytes], match: str) -> bytes:
    """Push pieces until the Decryptor refuses (by ``finalize`` at the latest); what it returned before."""
    produced = bytearray()
    with pytest.raises(IntegrityError, match=match):
        for piece in pieces:
            produced += decryptor.update(piece)
        produced += decryptor.finalize()
    for again in (lambda: decryptor.update(b"x"), decryptor.finalize):  # sticky
        with pytest.raises(IntegrityError, match=match):
            again()
    return bytes(produced)


@pytest.mark.parametrize("position", [0, 23, 24, 55, 56, 56 + CHUNK, 56 + SEALED - 1, len(CT) - 1])
def test_flipped_bit(position: int) -> None:
    ct = bytearray(CT)
    ct[position] ^= 0x04
    _fails(bytes(ct), "commitment" if position < cs.HEADER_SIZE else "failed authentication")


def test_dropped_chunk() -> None:
    _fails(HEADER + CHUNKS[0] + CHUNKS[2] + CHUNKS[3], "chunk 1 failed authentication")


def test_reordered_chunks() -> None:
    assert _fails(HEADER + CHUNKS[1] + CHUNKS[0] + CHUNKS[2] + CHUNKS[3], "chunk 0 failed") == b""


@pytest.mark.parametrize("cut", [SEALED, 2 * SEALED, 3 * SEALED, 2 * SEALED + 100, 3 * SEALED + 5])
def test_truncated(cut: int) -> None:
    _fails(HEADER + b"".join(CHUNKS)[:cut], "truncated|failed authentication")


def test_header_only_and_partial_header() -> None:
    _fails(HEADER, "truncated")
    _fails(HEADER[:40], "header")


def test_appended_chunk_or_bytes() -> None:
    _fails(CT + CHUNKS[0], "failed authentication")
    _fails(CT + b"\x00", "failed authentication")
    empty_final = _encrypt(DATA[: 2 * CHUNK])
    _fails(empty_final + _chunks(empty_final)[1][-1], "failed authentication")


def test_swapped_artifacts_fail_the_commitment() -> None:
    other_ctx = cs.artifact_context("op_1", "other.pdf")
    other_ct = _encrypt(b"other artifact", OTHER_KEY, other_ctx)
    # The other artifact's ciphertext under this artifact's key and name...
    _fails(other_ct, "commitment")
    # ...and this ciphertext moved to another name or operation, even with the right key.
    _fails(CT, "commitment", ctx=other_ctx)
    _fails(CT, "commitment", ctx=cs.artifact_context("op_2", "report.pdf"))


def test_swapped_wraps_are_refused() -> None:
    secret, public = keywrap.generate_encryption_keypair()
    wrap_a = keywrap.wrap_data_key(public, "op_1", "a.txt", KEY, hashlib.sha256(b"a").hexdigest())
    wrap_b = keywrap.wrap_data_key(public, "op_1", "b.txt", OTHER_KEY, hashlib.sha256(b"b").hexdigest())
    with pytest.raises(IntegrityError, match="another artifact"):
        keywrap.unwrap_data_key(secret, wrap_b, "op_1", "a.txt")
    assert keywrap.unwrap_data_key(secret, wrap_a, "op_1", "a.txt").data_key == KEY


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(size=sizes, cuts=st.lists(st.integers(0, 10**6), max_size=12))
def test_decryptor_round_trip_with_any_pieces(size: int, cuts: list[int]) -> None:
    """The push-style Decryptor gives back the plaintext whatever the pieces, in whole authenticated chunks,
    and only ``finalize`` yields the short final chunk."""
    data = _data(size, size)
    ct = _encrypt(data)
    decryptor, produced = cs.Decryptor(KEY, CTX), bytearray()
    for piece in _split(ct, cuts):
        plain = decryptor.update(piece)
        assert len(plain) % CHUNK == 0
        produced += plain
    assert len(produced) == size // CHUNK * CHUNK
    produced += decryptor.finalize()
    assert produced == data
    with pytest.raises(IntegrityError, match="after the end"):
        decryptor.update(b"")


def test_decryptor_output_is_reused_and_cleared_on_failure() -> None:
    """``update`` returns a view of a buffer the next call overwrites; when a call fails, the plaintext of the
    chunks it opened before the bad one is wiped, not left in memory for a stale view to read."""
    data = _data(4 * CHUNK + 100, 3)
    header, chunks = _chunks(_encrypt(data))
    decryptor = cs.Decryptor(KEY, CTX)
    first = decryptor.update(header + chunks[0] + chunks[1])
    assert bytes(first) == data[: 2 * CHUNK]
    broken = bytearray(chunks[3])
    broken[5] ^= 1
    with pytest.raises(IntegrityError, match="chunk 3 failed"):
        decryptor.update(chunks[2] + bytes(broken))  # chunk 2 opens into the same buffer, then chunk 3 fails
    assert bytes(first) == bytes(2 * CHUNK)


def test_decryptor_needs_the_header_and_final_chunk() -> None:
    assert _push_until_failure(cs.Decryptor(KEY, CTX), [HEADER[:40]], "header") == b""
    assert _push_until_failure(cs.Decryptor(KEY, CTX), [HEADER + CHUNKS[0]], "truncated") == DATA[:CHUNK]
    with pytest.raises(IntegrityError):
        cs.Decryptor(KEY[:31], CTX)


def test_failures_are_sticky() -> None:
    stream = cs.decrypt_stream(KEY, CTX, [CT[:-1]])
    with pytest.raises(IntegrityError):
        list(stream)
    with pytest.raises(IntegrityError):
        next(stream)


def test_decrypt_range_rejects_short_long_and_tampered_responses() -> None:
    size = len(CT)

    def short(first: int, last: int) -> Iterator[bytes]:
        yield CT[first:last]

    def long(first: int, last: int) -> Iterator[bytes]:
        yield CT[first : last + 2]

    tampered = bytearray(CT)
    tampered[cs.HEADER_SIZE + SEALED + 5] ^= 1
    with pytest.raises(IntegrityError, match="fewer bytes"):
        list(cs.decrypt_range(KEY, CTX, 0, 10, size, short))
    with pytest.raises(IntegrityError, match="more bytes"):
        list(cs.decrypt_range(KEY, CTX, CHUNK, CHUNK + 1, size, long))
    with pytest.raises(IntegrityError, match="chunk 1 failed"):
        list(cs.decrypt_range(KEY, CTX, CHUNK, CHUNK + 1, size, _fetcher(bytes(tampered))))
    with pytest.raises(IntegrityError, match="commitment"):
        list(cs.decrypt_range(KEY, cs.artifact_context("x", "y"), CHUNK, CHUNK, size, _fetcher(CT)))
    # A wrong (shorter) claimed size makes a full chunk look final: its exact length no longer matches.
    with pytest.raises(IntegrityError):
        list(cs.decrypt_range(KEY, CTX, 0, CHUNK, size - 116, _fetcher(CT)))


def test_authenticate_length() -> None:
    assert cs.authenticate_length(KEY, CTX, len(CT), _fetcher(CT)) == len(DATA)
    with pytest.raises(IntegrityError):
        cs.authenticate_length(KEY, CTX, len(CT) - SEALED, _fetcher(CT))
