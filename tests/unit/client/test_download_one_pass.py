"""The one-pass download (``strongroom.client.download``): what an interrupted download leaves to resume from is
exactly the ciphertext that arrived, wherever the cut falls, and a failed check leaves nothing behind.

The plaintext is decrypted as it arrives, so the ciphertext of a cut download is rebuilt from the authenticated
chunks; these tests compare it byte for byte with what the server sent.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from client_fake_api import API, FakeApi

from shared.crypto import cobblestone
from shared.errors import IntegrityError, StrongroomError
from strongroom.client import StrongroomClient
from strongroom.client.download import partial_path
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
