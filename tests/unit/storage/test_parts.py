"""``shared.storage.parts`` without a server: concurrency is bounded and real, digests come from the bytes sent,
the first failure stops the upload only after every part in flight has finished, memory stays below one part."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import threading
import tracemalloc
from pathlib import Path

import pytest

from shared.errors import StorageError
from shared.storage.parts import READ_BLOCK, PartSource, SentPart, SourceWindow, send_parts

pytestmark = pytest.mark.unit

MiB = 1024 * 1024
WAIT = 10.0  # generous barrier timeout: a broken barrier fails the test, it never hangs it


def write_file(path: Path, size: int) -> bytes:
    data = os.urandom(size)
    path.write_bytes(data)
    return data


def drain(body: SourceWindow, block: int = 16 * 1024) -> bytes:
    """Read a body the way http.client sends one: fixed blocks until ``b""``."""
    return b"".join(iter(lambda: body.read(block), b""))


class InFlight:
    """Counts concurrent sends, and remembers the most seen at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.active = 0
        self.most = 0
        self.started: list[int] = []

    def enter(self, number: int) -> None:
        with self.lock:
            self.active += 1
            self.most = max(self.most, self.active)
            self.started.append(number)

    def leave(self) -> None:
        with self.lock:
            self.active -= 1


# --- send_parts ---------------------------------------------------------------------------------------------


def test_parts_are_sent_concurrently_up_to_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "src.bin"
    write_file(path, 10 * MiB + 123)
    seen = InFlight()
    first_round = threading.Barrier(4, timeout=WAIT)  # only passes if four sends really are in flight together

    def send(number: int, body: SourceWindow, digest: bytes) -> str:
        seen.enter(number)
        try:
            if number <= 4:
                first_round.wait()
            drain(body)
            return f"etag-{number}"
        finally:
            seen.leave()

    with path.open("rb") as src:
        parts, _ = send_parts(PartSource(src, "k"), 10 * MiB + 123, MiB, 4, send)
    assert seen.most == 4
    assert sorted(seen.started) == list(range(1, 12))
    assert [(p.number, p.etag) for p in parts] == [(n, f"etag-{n}") for n in range(1, 12)]


@pytest.mark.parametrize("concurrency", [1, 3])
def test_digests_are_of_the_bytes_sent_and_the_whole_is_in_order(tmp_path: Path, concurrency: int) -> None:
    path = tmp_path / "src.bin"
    data = write_file(path, 5 * MiB + 7)
    received: dict[int, bytes] = {}

    def send(number: int, body: SourceWindow, digest: bytes) -> str:
        sent = drain(body)
        received[number] = hashlib.sha256(sent).digest()
        return str(len(sent))

    with path.open("rb") as src:
        parts, whole = send_parts(PartSource(src, "k"), len(data), 2 * MiB, concurrency, send)

    assert whole == hashlib.sha256(data).digest()
    chunks = [data[i : i + 2 * MiB] for i in range(0, len(data), 2 * MiB)]
    assert parts == [
        SentPart(number=n, sha256=hashlib.sha256(chunk).digest(), etag=str(len(chunk)))
        for n, chunk in enumerate(chunks, start=1)
    ]
    assert received == {p.number: p.sha256 for p in parts}


def test_first_failure_is_raised_after_parts_in_flight_finish_and_no_new_part_starts(tmp_path: Path) -> None:
    path = tmp_path / "src.bin"
    write_file(path, 20 * MiB)
    seen = InFlight()
    finished: list[int] = []
    release = threading.Event()

    def send(number: int, body: SourceWindow, digest: bytes) -> str:
        seen.enter(number)
        try:
            if number == 2:
                raise StorageError("part 2 refused", code="checksum_mismatch")
            release.wait(WAIT)  # still running when part 2 fails
            drain(body)
            finished.append(number)
            return "etag"
        finally:
            seen.leave()

    timer = threading.Timer(0.3, release.set)
    timer.start()
    try:
        with path.open("rb") as src, pytest.raises(StorageError) as exc:
            send_parts(PartSource(src, "k"), 20 * MiB, MiB, 3, send)
    finally:
        timer.cancel()
        release.set()
    assert exc.value.code == "checksum_mismatch"
    assert seen.active == 0, "send_parts returned while a part request was still running"
    assert max(seen.started) <= 3, f"parts started after the failure: {sorted(seen.started)}"
    assert sorted(finished) == sorted(n for n in seen.started if n != 2)


def test_a_short_source_is_refused_before_its_missing_part_is_sent(tmp_path: Path) -> None:
    path = tmp_path / "src.bin"
    write_file(path, 3 * MiB)
    sent: list[int] = []

    def send(number: int, body: SourceWindow, digest: bytes) -> str:
        drain(body)
        sent.append(number)
        return "etag"

    with path.open("rb") as src, pytest.raises(StorageError) as exc:
        send_parts(PartSource(src, "k"), 5 * MiB, MiB, 2, send)
    assert exc.value.code == "source_truncated"
    assert 4 not in sent and 5 not in sent


def test_peak_memory_stays_far_below_one_part_with_parts_in_flight(tmp_path: Path) -> None:
    """Four 8 MiB parts in flight at once (a barrier proves it) while each is signed and sent in the block sizes
    botocore and http.client use: buffering even one part would cost 8 MiB, all four 32 MiB."""
    size, part = 40 * MiB, 8 * MiB
    path = tmp_path / "src.bin"
    write_file(path, size)
    first_round = threading.Barrier(4, timeout=WAIT)

    def send(number: int, body: SourceWindow, digest: bytes) -> str:
        signer = hashlib.sha256()
        for block in iter(lambda: body.read(MiB), b""):  # botocore's payload signer asks for 1 MiB
            signer.update(block)
        body.seek(0)
        if number <= 4:
            first_round.wait()
        sender = hashlib.sha256()
        for block in iter(lambda: body.read(16 * 1024), b""):
            sender.update(block)
        assert signer.digest() == sender.digest() == digest
        return "etag"

    tracemalloc.start()
    try:
        with path.open("rb") as src:
            send_parts(PartSource(src, "k"), size, part, 4, send)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < part // 2, f"peak Python allocation {peak} bytes with four 8 MiB parts in flight"


@pytest.mark.parametrize(("concurrency", "part_size"), [(0, MiB), (1, 0)])
def test_nonsense_limits_are_refused(tmp_path: Path, concurrency: int, part_size: int) -> None:
    with pytest.raises(ValueError):
        send_parts(PartSource(io.BytesIO(b"x"), "k"), 1, part_size, concurrency, lambda *_: "etag")


# --- PartSource ---------------------------------------------------------------------------------------------


class CountingReader(io.BufferedReader):
    """A subclass that transforms nothing, but could: positional reads would bypass its ``read``."""


def test_positional_reads_only_for_plain_files(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    write_file(path, 1000)
    with path.open("rb") as plain, path.open("rb", buffering=0) as raw, path.open("r+b") as rw:
        assert PartSource(plain, "k").positional and PartSource(raw, "k").positional
        assert PartSource(rw, "k").positional
    with CountingReader(io.FileIO(path)) as sub:
        assert not PartSource(sub, "k").positional
    with gzip.open(tmp_path / "z.gz", "wb") as z:
        z.write(b"compressed")
    with gzip.open(tmp_path / "z.gz", "rb") as zipped:
        source = PartSource(zipped, "k")  # type: ignore[arg-type]
        assert not source.positional
        assert source.read_at(0, 100) == b"compressed"  # the decompressed bytes, not the file's
    read_end, write_end = os.pipe()
    with os.fdopen(read_end, "rb") as pipe, os.fdopen(write_end, "wb"):
        assert not PartSource(pipe, "k").positional
    assert not PartSource(io.BytesIO(b"abc"), "k").positional


def test_unflushed_writes_are_seen(tmp_path: Path) -> None:
    """A worker's temporary file may still hold its last bytes in the write buffer: they must be uploaded."""
    data = os.urandom(3000)
    with (tmp_path / "t.bin").open("w+b") as tmp:
        tmp.write(data)  # no flush, no seek
        source = PartSource(tmp, "k")
        assert source.positional
        assert source.digest(0, len(data)) == hashlib.sha256(data).digest()


def test_reads_from_many_threads_see_their_own_ranges() -> None:
    data = os.urandom(2 * MiB)
    source = PartSource(io.BytesIO(data), "k")  # the locked path: one shared position

    def check(offset: int) -> bool:
        return all(source.read_at(offset, 4096) == data[offset : offset + 4096] for _ in range(50))

    offsets = range(0, 2 * MiB, 64 * 1024)
    results: list[bool] = []
    threads = [threading.Thread(target=lambda o=o: results.append(check(o))) for o in offsets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [True] * len(offsets)


# --- SourceWindow -------------------------------------------------------------------------------------------


def test_window_reads_are_capped_rewindable_and_bounded(tmp_path: Path) -> None:
    data = os.urandom(READ_BLOCK * 3 + 10)
    window = PartSource(io.BytesIO(data), "k").window(5, READ_BLOCK * 2)
    assert len(window) == READ_BLOCK * 2
    assert window.read(READ_BLOCK * 4) == data[5 : 5 + READ_BLOCK]  # short read, as a raw stream may
    assert window.tell() == READ_BLOCK
    assert window.seek(-10, os.SEEK_END) == READ_BLOCK * 2 - 10
    assert window.read() == data[5 + READ_BLOCK * 2 - 10 : 5 + READ_BLOCK * 2]
    assert window.read(1) == b""
    window.seek(0)
    assert window.read() == data[5 : 5 + READ_BLOCK * 2]  # read() still means everything left
    buffer = bytearray(8)
    window.seek(1)
    assert window.readinto(buffer) == 8 and bytes(buffer) == data[6:14]


def test_window_past_the_end_of_the_source_is_refused() -> None:
    window = PartSource(io.BytesIO(b"short"), "k").window(0, 100)
    assert window.read(3) == b"sho"
    with pytest.raises(StorageError) as exc:
        drain(window)
    assert exc.value.code == "source_truncated"
