"""The one-pass download (``strongroom.client.download``): what an interrupted download leaves to resume from is
exactly the ciphertext that arrived, wherever the cut falls, and a failed check leaves nothing behind.

The plaintext is decrypted as it arrives, so the ciphertext of a cut download is rebuilt from the authenticated
chunks; these tests compare it byte for byte with what the server sent.
"""

from __future__ import annotations

import errno
import hashlib
import os
import threading
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from client_fake_api import API, FakeApi

from shared.crypto import cobblestone, keywrap
from shared.crypto.aead import BACKENDS, AeadFactory, nacl_aes_gcm_available
from shared.errors import IntegrityError, StrongroomError, Unavailable
from strongroom.client import StrongroomClient, download
from strongroom.client.download import DownloadTicket, RangeAnswer, download_artifact, partial_path
from strongroom.client.identity import Identity, generate_identity

pytestmark = pytest.mark.unit

SIZE = 5 * cobblestone.CHUNK_SIZE + 777
PLAIN = os.urandom(SIZE)
HEADER, SEALED = cobblestone.HEADER_SIZE, cobblestone.SEALED_CHUNK_SIZE


@pytest.fixture
def identity() -> Identity:
    return generate_identity()


@pytest.fixture
def api() -> FakeApi:
    return FakeApi()


@pytest.fixture
def client(api: FakeApi, identity: Identity) -> Iterator[StrongroomClient]:
    with StrongroomClient(API, identity, transport=api.transport, sleep=lambda _: None) as c:
        yield c


def stored(api: FakeApi, identity: Identity) -> tuple[str, bytes]:
    op = api.add_operation("privacy-audit_" + "a" * 26, identity.address, identity.encryption_public_key)
    op.status = "succeeded"
    api.add_artifact(op, "data.bin", PLAIN)
    return op.id, api.s3_objects[f"{op.id}/data.bin"]


@pytest.mark.parametrize(
    "cut",
    [
        0,  # nothing arrived
        30,  # inside the header
        HEADER,  # the header, no chunk
        HEADER + 100,  # the header and part of the first chunk
        HEADER + SEALED,  # exactly one chunk
        HEADER + 3 * SEALED + 5,  # three chunks and the start of the fourth
        HEADER + 5 * SEALED + 10,  # every full chunk and part of the final one
    ],
)
def test_a_cut_download_leaves_exactly_the_received_ciphertext_and_resumes(
    client: StrongroomClient, api: FakeApi, identity: Identity, tmp_path: Path, cut: int
) -> None:
    op_id, ciphertext = stored(api, identity)
    dest = tmp_path / "data.bin"
    api.s3_truncate_once = cut
    with pytest.raises(StrongroomError) as info:
        client.download(op_id, "data.bin", dest)
    assert info.value.code == "download_incomplete"
    assert not dest.exists()
    part = partial_path(dest, client.ticket(op_id, "data.bin"))
    assert part.read_bytes() == ciphertext[:cut]
    assert sorted(p.name for p in tmp_path.iterdir()) == [part.name]  # no plaintext temp file left
    result = client.download(op_id, "data.bin", dest)
    assert result.resumed_from == cut
    assert dest.read_bytes() == PLAIN
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.bin"]


def test_a_cut_answer_that_ignored_range_replaces_the_older_partial(
    client: StrongroomClient, api: FakeApi, identity: Identity, tmp_path: Path
) -> None:
    """The fake's cut answers ignore ``Range`` (a 200 from byte 0): the second attempt starts over, and what it
    leaves is its own prefix, not the first attempt's bytes with the second's appended."""
    op_id, ciphertext = stored(api, identity)
    dest = tmp_path / "data.bin"
    api.s3_truncate_once = HEADER + SEALED + 9
    with pytest.raises(StrongroomError):
        client.download(op_id, "data.bin", dest)
    api.s3_truncate_once = HEADER + 3 * SEALED + 13
    with pytest.raises(StrongroomError):
        client.download(op_id, "data.bin", dest)
    part = partial_path(dest, client.ticket(op_id, "data.bin"))
    assert part.read_bytes() == ciphertext[: HEADER + 3 * SEALED + 13]
    assert client.download(op_id, "data.bin", dest).resumed_from == HEADER + 3 * SEALED + 13
    assert dest.read_bytes() == PLAIN


def test_a_modified_chunk_fails_and_leaves_nothing(
    client: StrongroomClient, api: FakeApi, identity: Identity, tmp_path: Path
) -> None:
    op_id, ciphertext = stored(api, identity)
    flipped = bytearray(ciphertext)
    flipped[HEADER + 2 * SEALED + 7] ^= 1
    api.s3_objects[f"{op_id}/data.bin"] = bytes(flipped)
    with pytest.raises(IntegrityError):
        client.download(op_id, "data.bin", tmp_path / "data.bin")
    assert list(tmp_path.iterdir()) == []


def test_a_partial_of_foreign_bytes_is_refused_and_removed(
    client: StrongroomClient, api: FakeApi, identity: Identity, tmp_path: Path
) -> None:
    """A partial whose header is not this payload's fails the key commitment: both temp files go."""
    op_id, _ = stored(api, identity)
    dest = tmp_path / "data.bin"
    part = partial_path(dest, client.ticket(op_id, "data.bin"))
    part.write_bytes(os.urandom(HEADER + SEALED))
    with pytest.raises(IntegrityError):
        client.download(op_id, "data.bin", dest)
    assert list(tmp_path.iterdir()) == []
    assert client.download(op_id, "data.bin", dest).resumed_from == 0
    assert dest.read_bytes() == PLAIN


def test_progress_counts_every_byte_once(
    client: StrongroomClient, api: FakeApi, identity: Identity, tmp_path: Path
) -> None:
    op_id, ciphertext = stored(api, identity)
    seen: list[tuple[int, int]] = []
    client.download(op_id, "data.bin", tmp_path / "data.bin", progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (len(ciphertext), len(ciphertext))
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)


# --- the pass itself, fed in small pieces: many batches through the worker thread ---

BIG = os.urandom(20 * cobblestone.CHUNK_SIZE + 5)


def big_ticket(identity: Identity) -> tuple[DownloadTicket, bytes]:
    op_id, name = "privacy-audit_" + "b" * 26, "big.bin"
    data_key = os.urandom(32)
    ciphertext = b"".join(cobblestone.encrypt_stream(data_key, cobblestone.artifact_context(op_id, name), [BIG]))
    digest = hashlib.sha256(BIG).hexdigest()
    ticket = DownloadTicket(
        operation_id=op_id,
        name=name,
        size=len(BIG),
        content_type="application/octet-stream",
        checksum="sha256:" + digest,
        ciphertext_checksum="sha256:" + hashlib.sha256(ciphertext).hexdigest(),
        wrapped_key=keywrap.wrap_data_key(identity.encryption_public_key, op_id, name, data_key, digest),
    )
    return ticket, ciphertext


def piece_source(ciphertext: bytes, *, piece: int = 5000, cut: int | None = None) -> Any:
    """Serves ``Range`` requests in ``piece``-byte pieces; with ``cut``, the connection drops after that byte."""

    @contextmanager
    def source(first: int, last: int | None) -> Iterator[RangeAnswer]:
        def pieces() -> Iterator[bytes]:
            end = len(ciphertext) if cut is None else cut
            for at in range(first, end, piece):
                yield ciphertext[at : min(at + piece, end)]
            if cut is not None:
                raise Unavailable("connection reset", code="download_incomplete")

        yield RangeAnswer(first, len(ciphertext), pieces())

    return source


def download_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "strongroom-download"]


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest) -> AeadFactory:
    if request.param == "pynacl" and not nacl_aes_gcm_available():
        pytest.skip("libsodium AES-256-GCM needs AES-NI / ARMv8 crypto extensions")
    return BACKENDS[request.param]


@pytest.fixture
def small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(download, "BATCH_SIZE", 12_000)
    monkeypatch.setattr(download, "QUEUE_DEPTH", 1)


@pytest.mark.usefixtures("small_batches")
@pytest.mark.parametrize("cut", [HEADER + 7 * SEALED + 3, HEADER + 13 * SEALED, HEADER + 20 * SEALED + 1])
def test_a_cut_after_many_batches_keeps_exactly_what_arrived(
    identity: Identity, tmp_path: Path, backend: AeadFactory, cut: int
) -> None:
    """Every batch handed to the worker before the cut is decrypted and written before the partial is rebuilt
    from it, with either AES-GCM backend."""
    ticket, ciphertext = big_ticket(identity)
    dest = tmp_path / "big.bin"
    secret = identity.encryption_secret_key
    with pytest.raises(Unavailable):
        download_artifact(ticket, secret, dest, piece_source(ciphertext, cut=cut), backend=backend)
    assert partial_path(dest, ticket).read_bytes() == ciphertext[:cut]
    result = download_artifact(ticket, secret, dest, piece_source(ciphertext), backend=backend)
    assert result.resumed_from == cut
    assert dest.read_bytes() == BIG
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.bin"]
    assert download_threads() == []


@pytest.mark.usefixtures("small_batches")
def test_a_bad_chunk_in_a_later_batch_fails_and_leaves_nothing(
    identity: Identity, tmp_path: Path, backend: AeadFactory
) -> None:
    ticket, ciphertext = big_ticket(identity)
    flipped = bytearray(ciphertext)
    flipped[HEADER + 15 * SEALED + 9] ^= 1
    with pytest.raises(IntegrityError, match="chunk 15 failed"):
        download_artifact(
            ticket,
            identity.encryption_secret_key,
            tmp_path / "big.bin",
            piece_source(bytes(flipped)),
            backend=backend,
        )
    assert list(tmp_path.iterdir()) == []
    assert download_threads() == []


@pytest.mark.usefixtures("small_batches")
def test_a_bad_chunk_before_a_cut_is_an_integrity_failure_not_a_resumable_one(
    identity: Identity, tmp_path: Path
) -> None:
    """The worker's failure wins over the connection dropping later: nothing is kept to resume from."""
    ticket, ciphertext = big_ticket(identity)
    flipped = bytearray(ciphertext)
    flipped[HEADER + 2 * SEALED + 1] ^= 1
    with pytest.raises(IntegrityError):
        download_artifact(
            ticket,
            identity.encryption_secret_key,
            tmp_path / "big.bin",
            piece_source(bytes(flipped), cut=HEADER + 4 * SEALED),
        )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.usefixtures("small_batches")
def test_a_write_failure_on_the_worker_reaches_the_caller(
    identity: Identity, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ticket, ciphertext = big_ticket(identity)
    writes = 0

    def disk_full(self: Any, plain: memoryview) -> None:
        nonlocal writes
        writes += 1
        if writes == 3:
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(download._OnePass, "_write", disk_full)
    with pytest.raises(OSError, match="No space"):
        download_artifact(ticket, identity.encryption_secret_key, tmp_path / "big.bin", piece_source(ciphertext))
    assert list(tmp_path.iterdir()) == []
    assert download_threads() == []


def test_memory_stays_bounded_when_receiving_outpaces_the_worker(identity: Identity, tmp_path: Path) -> None:
    """A 48 MiB artifact from a source far faster than decryption (fresh 64 KiB pieces copied from memory): the
    queue to the worker is bounded, so the download's peak allocations stay a few MiB (the batches waiting and
    the one being filled), not the artifact's size."""
    op_id, name, total = "privacy-audit_" + "c" * 26, "huge.bin", 48 * 1024 * 1024
    data_key, block = os.urandom(32), os.urandom(1024 * 1024)
    ctx = cobblestone.artifact_context(op_id, name)
    ciphertext = b"".join(cobblestone.encrypt_stream(data_key, ctx, (block for _ in range(48))))
    plain_digest = hashlib.sha256(block * 48).hexdigest()
    ticket = DownloadTicket(
        operation_id=op_id,
        name=name,
        size=total,
        content_type="application/octet-stream",
        checksum="sha256:" + plain_digest,
        ciphertext_checksum="sha256:" + hashlib.sha256(ciphertext).hexdigest(),
        wrapped_key=keywrap.wrap_data_key(identity.encryption_public_key, op_id, name, data_key, plain_digest),
    )

    @contextmanager
    def source(first: int, last: int | None) -> Iterator[RangeAnswer]:
        view = memoryview(ciphertext)
        pieces = (bytes(view[at : at + 65536]) for at in range(first, len(ciphertext), 65536))
        yield RangeAnswer(first, len(ciphertext), pieces)

    tracemalloc.start()
    try:
        download_artifact(ticket, identity.encryption_secret_key, tmp_path / name, source)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (tmp_path / name).stat().st_size == total
    assert peak < 12 * 1024 * 1024, f"peak {peak / 2**20:.1f} MiB"
