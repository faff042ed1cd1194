"""One behavioural suite for every ``ObjectStore`` backend (memory, moto, SeaweedFS).

A backend's test module subclasses ``ObjectStoreContract`` and provides three fixtures: ``store`` (the backend,
bucket created), ``prefix`` (a key prefix no other test uses) and ``missing_bucket_store`` (the same backend pointed
at a bucket that does not exist). Class attributes describe what the backend can honestly be asked to prove.
"""

from __future__ import annotations

import hashlib
import io
import os
from base64 import b64encode
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shared.errors import Conflict, NotFound, StorageError, StrongroomError, Unavailable, ValidationFailed
from shared.storage import ObjectStore

MiB = 1024 * 1024


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_b64(data: bytes) -> str:
    return b64encode(hashlib.sha256(data).digest()).decode()


class FailingReader(io.BytesIO):
    """A source whose disk "fails" after ``fail_after`` bytes have been read in total."""

    def __init__(self, data: bytes, fail_after: int) -> None:
        super().__init__(data)
        self.fail_after = fail_after
        self.total = 0

    def read(self, size: int | None = -1) -> bytes:
        chunk = super().read(size)
        self.total += len(chunk)
        if self.total > self.fail_after:
            raise OSError("simulated read failure")
        return chunk


class ObjectStoreContract:
    """Subclass, then provide ``store``, ``prefix`` and ``missing_bucket_store`` fixtures."""

    #: the backend reports ``checksum_sha256`` on ``head`` (SeaweedFS may not)
    reports_checksum: bool = True
    #: a PUT into a missing bucket creates it (SeaweedFS does, for an admin identity)
    writes_create_buckets: bool = False
    #: bytes at which ``put_file`` switches to multipart on this backend's store fixture
    multipart_size: int = 11 * MiB

    # --- small objects ------------------------------------------------------------------------------

    @pytest.mark.parametrize("data", [b"", b"x", os.urandom(70_000)], ids=["empty", "one", "70k"])
    def test_put_bytes_round_trips_with_checksum(self, store: ObjectStore, prefix: str, data: bytes) -> None:
        key = prefix + "obj.bin"
        store.put_bytes(key, data, content_type="text/plain")
        assert store.get_bytes(key) == data
        info = store.head(key)
        assert info.key == key and info.size == len(data)
        assert info.last_modified.tzinfo is not None
        assert abs(info.last_modified - datetime.now(UTC)) < timedelta(minutes=5)
        if self.reports_checksum:
            assert info.checksum_sha256 == sha256_b64(data)
        else:
            assert info.checksum_sha256 in (None, sha256_b64(data))

    def test_overwrite_replaces_content(self, store: ObjectStore, prefix: str) -> None:
        key = prefix + "obj"
        store.put_bytes(key, b"first")
        store.put_bytes(key, b"second!")
        assert store.get_bytes(key) == b"second!"
        assert store.head(key).size == 7

    def test_put_if_absent_never_replaces_an_object(self, store: ObjectStore, prefix: str) -> None:
        """``If-None-Match: *``: what the access log relies on so a batch is never overwritten."""
        key = prefix + "once"
        store.put_bytes(key, b"first", if_absent=True)
        with pytest.raises(Conflict) as exc:
            store.put_bytes(key, b"second", if_absent=True)
        assert exc.value.code == "object_exists"
        assert store.get_bytes(key) == b"first"

    def test_missing_object_is_not_found(self, store: ObjectStore, prefix: str) -> None:
        key = prefix + "absent"
        with pytest.raises(NotFound):
            store.get_bytes(key)
        with pytest.raises(NotFound):
            store.head(key)
        with pytest.raises(NotFound):
            store.open_range(key, 0, 10)
        assert store.exists(key) is False
        store.put_bytes(key, b"now here")
        assert store.exists(key) is True

    # --- ranges -------------------------------------------------------------------------------------

    @pytest.mark.parametrize(
        ("first", "last", "expected"),
        [
            (None, None, slice(None)),
            (0, 0, slice(0, 1)),
            (10, 19, slice(10, 20)),
            (150_000, None, slice(150_000, None)),
            (199_990, 500_000, slice(199_990, None)),  # end clipped, as HTTP does
            (None, 99, slice(0, 100)),
            (0, 199_999, slice(None)),
        ],
    )
    def test_open_range_streams_inclusive_ranges(
        self, store: ObjectStore, prefix: str, first: int | None, last: int | None, expected: slice
    ) -> None:
        data = os.urandom(200_000)
        key = prefix + "ranged"
        store.put_bytes(key, data)
        chunks = list(store.open_range(key, first, last))
        assert b"".join(chunks) == data[expected]
        assert all(isinstance(c, bytes) and c for c in chunks)

    @pytest.mark.parametrize(("first", "last"), [(1000, None), (1000, 2000), (5, 2), (-1, None)])
    def test_unsatisfiable_range_is_refused(
        self, store: ObjectStore, prefix: str, first: int, last: int | None
    ) -> None:
        key = prefix + "short"
        store.put_bytes(key, b"0123456789")
        with pytest.raises(ValidationFailed) as exc:
            b"".join(store.open_range(key, first, last))
        assert exc.value.code == "range_not_satisfiable"

    def test_whole_empty_object_streams_nothing(self, store: ObjectStore, prefix: str) -> None:
        store.put_bytes(prefix + "empty", b"")
        assert b"".join(store.open_range(prefix + "empty")) == b""

    # --- listing ------------------------------------------------------------------------------------

    def test_list_is_ordered_filtered_and_paged(self, store: ObjectStore, prefix: str) -> None:
        names = ["b/2", "a", "b/1", "c", "b/10", "é"]
        for name in names:
            store.put_bytes(prefix + "dir/" + name, name.encode())
        store.put_bytes(prefix + "dirx/other", b"sibling prefix, must not be listed")

        listed = list(store.list(prefix + "dir/"))
        assert [i.key for i in listed] == [prefix + "dir/" + n for n in sorted(names)]
        assert [i.size for i in listed] == [len(n.encode()) for n in sorted(names)]

        after = list(store.list(prefix + "dir/", start_after=prefix + "dir/b/10"))
        assert [i.key.rsplit("dir/", 1)[1] for i in after] == ["b/2", "c", "é"]
        limited = list(store.list(prefix + "dir/", start_after=prefix + "dir/a", limit=2))
        assert [i.key.rsplit("dir/", 1)[1] for i in limited] == ["b/1", "b/10"]
        assert list(store.list(prefix + "dir/", limit=0)) == []
        assert list(store.list(prefix + "nothing-here/")) == []

    def test_list_prefixes_names_each_directory_once(self, store: ObjectStore, prefix: str) -> None:
        for name in ["b/2", "a", "b/1", "c/x/y", "b/10"]:
            store.put_bytes(prefix + "dir/" + name, b"")
        store.put_bytes(prefix + "dirx/other/1", b"sibling prefix, must not be listed")
        assert list(store.list_prefixes(prefix + "dir/")) == [prefix + "dir/b/", prefix + "dir/c/"]
        assert list(store.list_prefixes(prefix + "nothing-here/")) == []

    # --- deletes ------------------------------------------------------------------------------------

    def test_delete_is_idempotent(self, store: ObjectStore, prefix: str) -> None:
        key = prefix + "gone"
        store.put_bytes(key, b"x")
        store.delete(key)
        assert not store.exists(key)
        store.delete(key)  # again: no error
        store.delete(prefix + "never-existed")

    def test_delete_many_crosses_the_batch_limit(self, store: ObjectStore, prefix: str) -> None:
        keys = [f"{prefix}many/{i:05d}" for i in range(1003)]
        for key in keys[:3] + keys[-3:]:
            store.put_bytes(key, b"x")
        _put_many(store, keys[3:-3])
        assert len(list(store.list(prefix + "many/"))) == 1003
        store.delete_many([*keys, prefix + "many/not-there"])
        assert list(store.list(prefix + "many/")) == []
        store.delete_many(keys)  # idempotent
        store.delete_many([])

    # --- streaming uploads --------------------------------------------------------------------------

    def test_put_file_small_round_trips(self, store: ObjectStore, prefix: str) -> None:
        data = os.urandom(300_000)
        key = prefix + "small.enc"
        store.put_file(key, io.BytesIO(data), size=len(data), sha256_hex=sha256_hex(data))
        assert store.get_bytes(key) == data
        info = store.head(key)
        assert info.size == len(data)
        if self.reports_checksum:
            assert info.checksum_sha256 == sha256_b64(data)

    def test_put_file_multipart_round_trips(self, store: ObjectStore, prefix: str, tmp_path: Any) -> None:
        path = tmp_path / "big.bin"
        digest = _write_random(path, self.multipart_size)
        key = prefix + "big.enc"
        with path.open("rb") as src:
            store.put_file(key, src, size=self.multipart_size, sha256_hex=digest)
        assert store.head(key).size == self.multipart_size
        hasher = hashlib.sha256()
        for chunk in store.open_range(key):
            hasher.update(chunk)
        assert hasher.hexdigest() == digest
        with path.open("rb") as src:
            src.seek(5 * 1024 * 1024 - 3)
            assert b"".join(store.open_range(key, 5 * 1024 * 1024 - 3, 5 * 1024 * 1024 + 2)) == src.read(6)

    @pytest.mark.parametrize("big", [False, True], ids=["single", "multipart"])
    def test_put_file_wrong_checksum_stores_nothing(
        self, store: ObjectStore, prefix: str, big: bool, tmp_path: Any
    ) -> None:
        key = prefix + "bad.enc"
        store.put_bytes(key, b"previous version")
        size = self.multipart_size if big else 1000
        path = tmp_path / "src.bin"
        _write_random(path, size)
        with path.open("rb") as src, pytest.raises(StorageError) as exc:
            store.put_file(key, src, size=size, sha256_hex=sha256_hex(b"something else"))
        assert exc.value.code == "checksum_mismatch"
        assert store.get_bytes(key) == b"previous version"  # the failed upload replaced nothing
        self.assert_no_pending_uploads(store, prefix)

    @pytest.mark.parametrize("big", [False, True], ids=["single", "multipart"])
    def test_put_file_failed_source_stores_nothing(self, store: ObjectStore, prefix: str, big: bool) -> None:
        size = self.multipart_size if big else 4000
        data = os.urandom(size)
        key = prefix + "broken.enc"
        with pytest.raises((OSError, StrongroomError)):
            store.put_file(key, FailingReader(data, size * 2 // 3), size=size, sha256_hex=sha256_hex(data))
        assert not store.exists(key)
        self.assert_no_pending_uploads(store, prefix)

    def test_put_file_truncated_source_is_refused(self, store: ObjectStore, prefix: str) -> None:
        data = b"only this much"
        with pytest.raises(StorageError) as exc:
            store.put_file(prefix + "short", io.BytesIO(data), size=100, sha256_hex=sha256_hex(data))
        assert exc.value.code == "source_truncated"
        assert not store.exists(prefix + "short")

    def test_put_file_rejects_a_malformed_checksum(self, store: ObjectStore, prefix: str) -> None:
        with pytest.raises(ValidationFailed):
            store.put_file(prefix + "x", io.BytesIO(b"abc"), size=3, sha256_hex="not-hex")

    # --- one-pass streamed uploads (put_stream) ------------------------------------------------------

    @pytest.mark.parametrize("big", [False, True], ids=["single", "multipart"])
    def test_put_stream_round_trips_and_returns_the_digest(self, store: ObjectStore, prefix: str, big: bool) -> None:
        size = self.multipart_size if big else 300_000
        data = os.urandom(size)
        key = prefix + "streamed.enc"
        digest = store.put_stream(key, _odd_pieces(data), size=size)
        assert digest == sha256_hex(data)
        assert store.head(key).size == size
        assert b"".join(store.open_range(key)) == data

    def test_put_stream_of_nothing(self, store: ObjectStore, prefix: str) -> None:
        assert store.put_stream(prefix + "empty", iter([b"", b""]), size=0) == sha256_hex(b"")
        assert store.get_bytes(prefix + "empty") == b""

    @pytest.mark.parametrize("big", [False, True], ids=["single", "multipart"])
    def test_put_stream_failing_source_stores_nothing(self, store: ObjectStore, prefix: str, big: bool) -> None:
        size = self.multipart_size if big else 4000
        key = prefix + "broken.enc"
        store.put_bytes(key, b"previous version")

        class SourceBroke(Exception):
            pass

        def pieces() -> Any:
            yield os.urandom(size * 2 // 3)
            raise SourceBroke

        with pytest.raises(SourceBroke):  # the source's own exception, as it was raised
            store.put_stream(key, pieces(), size=size)
        assert store.get_bytes(key) == b"previous version"
        self.assert_no_pending_uploads(store, prefix)

    @pytest.mark.parametrize("big", [False, True], ids=["single", "multipart"])
    @pytest.mark.parametrize(("delta", "code"), [(-1, "source_truncated"), (1, "source_too_long")])
    def test_put_stream_wrong_length_stores_nothing(
        self, store: ObjectStore, prefix: str, big: bool, delta: int, code: str
    ) -> None:
        size = self.multipart_size if big else 4000
        key = prefix + "wrong-length.enc"
        with pytest.raises(StorageError) as exc:
            store.put_stream(key, _odd_pieces(os.urandom(size + delta)), size=size)
        assert exc.value.code == code
        assert not store.exists(key)
        self.assert_no_pending_uploads(store, prefix)

    # --- presigning ---------------------------------------------------------------------------------

    def test_presign_get_names_key_and_expiry(self, store: ObjectStore, prefix: str) -> None:
        key = prefix + "artifacts/report.md.enc"
        store.put_bytes(key, b"data")
        before = datetime.now(UTC)
        presigned = store.presign_get(key, ttl=120, filename='r"ep\r\nort.md', content_type="text/markdown")
        assert before + timedelta(seconds=119) <= presigned.expires_at <= datetime.now(UTC) + timedelta(seconds=121)
        assert "report.md.enc" in presigned.url
        assert "\r" not in presigned.url and "\n" not in presigned.url

    # --- bucket -------------------------------------------------------------------------------------

    def test_ensure_bucket_is_idempotent_and_ping_passes(self, store: ObjectStore) -> None:
        store.ensure_bucket(cors_origins=("http://127.0.0.1:9",), expire_after_days=8)
        store.ensure_bucket(cors_origins=("http://127.0.0.1:9",), expire_after_days=8)
        store.ping()

    def test_missing_bucket(self, missing_bucket_store: ObjectStore) -> None:
        with pytest.raises(Unavailable):
            missing_bucket_store.ping()
        if not self.writes_create_buckets:
            with pytest.raises(StorageError) as exc:
                missing_bucket_store.put_bytes("k", b"v")
            assert exc.value.code == "bucket_missing"
        missing_bucket_store.ensure_bucket()
        missing_bucket_store.ping()
        missing_bucket_store.put_bytes("k", b"v")
        assert missing_bucket_store.get_bytes("k") == b"v"

    # --- hooks --------------------------------------------------------------------------------------

    def assert_no_pending_uploads(self, store: ObjectStore, prefix: str) -> None:
        """Backends with multipart uploads override this to prove no upload is left pending."""


def _write_random(path: Any, size: int) -> str:
    hasher = hashlib.sha256()
    with path.open("wb") as out:
        remaining = size
        while remaining:
            chunk = os.urandom(min(remaining, MiB))
            hasher.update(chunk)
            out.write(chunk)
            remaining -= len(chunk)
    return hasher.hexdigest()


def _put_many(store: ObjectStore, keys: list[str]) -> None:
    """Create many tiny objects with a few threads: a real server round trip each, but not one at a time."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(lambda k: store.put_bytes(k, b"x"), keys))


def _odd_pieces(data: bytes) -> Any:
    """``data`` in pieces of awkward sizes (as an encrypting generator yields them), never aligned with parts."""
    sizes = (1, 16_400, 65_537, 1_000_003)
    position, turn = 0, 0
    while position < len(data):
        step = sizes[turn % len(sizes)]
        yield data[position : position + step]
        position += step
        turn += 1
