"""store_artifacts against the in-memory ObjectStore: what is uploaded decrypts for the grantee, and only then."""

from __future__ import annotations

import hashlib
import os
import signal
import threading
from collections.abc import Callable
from contextlib import suppress
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

from shared import layout
from shared.crypto import cobblestone, keywrap
from shared.crypto.keyring import Keyring
from shared.errors import StorageError, ValidationFailed
from shared.models import OperationRecord, StoredArtifact, utcnow
from shared.records import OperationStore
from shared.settings import Settings
from shared.storage.memory import MemoryObjectStore
from worker_service.agents.outputs import LimitExceeded
from worker_service.pipeline import store as store_module
from worker_service.pipeline.store import detect_content_type, store_artifacts, unnamed_objects
from worker_service.services import Services

pytestmark = pytest.mark.unit


def make_services(store: Any = None, **settings: Any) -> Services:
    keyring = Keyring.from_json(Keyring.generate_json("k1"))
    store = store if store is not None else MemoryObjectStore()
    config = Settings.from_env({"REDIS_URL": "redis://127.0.0.1:1/0"}, **settings)
    client = redis.Redis.from_url(config.redis_url)  # never contacted by store_artifacts
    return Services(config, client, store, keyring, OperationStore(store, keyring, None))


def make_record(public_key: str) -> OperationRecord:
    now = utcnow()
    return OperationRecord(
        id=layout.new_operation_id("privacy-audit"),
        agent="privacy-audit",
        grantee="0x" + "ab" * 20,
        encryption_public_key=public_key,
        status="running",
        created_at=now,
        expires_at=now + timedelta(days=7),
    )


@pytest.fixture
def keypair() -> tuple[bytes, str]:
    return keywrap.generate_encryption_keypair()


RUN = "0123456789abcdef"


def store(services: Services, record: OperationRecord, out: Path, **kwargs: Any) -> list[StoredArtifact]:
    """``store_artifacts`` as one run that keeps its lease (unless ``ensure_owner`` says otherwise)."""
    kwargs.setdefault("ensure_owner", lambda: None)
    return store_artifacts(services, record, out, run_id=RUN, **kwargs)


def decrypt(services: Services, record: OperationRecord, artifact: StoredArtifact, secret: bytes) -> bytes:
    blob = services.store.get_bytes(layout.artifact_key(record.id, artifact.name, RUN))
    assert artifact.ciphertext_checksum == "sha256:" + hashlib.sha256(blob).hexdigest()
    unwrapped = keywrap.unwrap_data_key(secret, artifact.encryption.wrapped_key.model_dump(), record.id, artifact.name)
    ctx = cobblestone.artifact_context(record.id, artifact.name)
    return b"".join(cobblestone.decrypt_stream(unwrapped.data_key, ctx, [blob]))


def test_artifacts_decrypt_with_the_grantee_secret(tmp_path: Path, keypair: tuple[bytes, str]) -> None:
    secret, public = keypair
    services = make_services()
    record = make_record(public)
    out = tmp_path / "out"
    out.mkdir()
    big = bytes(range(256)) * 1000  # several Cobblestone chunks
    (out / "report.md").write_text("# Report\nfine\n")
    (out / "data.bin").write_bytes(big)
    (out / "noext").write_text("plain words")

    stored = store(services, record, out)

    assert [a.name for a in stored] == ["data.bin", "noext", "report.md"]
    for artifact in stored:
        assert artifact.run_id == RUN
        plaintext = (out / artifact.name).read_bytes()
        blob = services.store.get_bytes(layout.artifact_key(record.id, artifact.name, RUN))
        assert artifact.size == len(plaintext) and artifact.ciphertext_size == len(blob)
        assert artifact.checksum == "sha256:" + hashlib.sha256(plaintext).hexdigest()
        assert artifact.ciphertext_checksum == "sha256:" + hashlib.sha256(blob).hexdigest()
        unwrapped = keywrap.unwrap_data_key(
            secret, artifact.encryption.wrapped_key.model_dump(), record.id, artifact.name
        )
        ctx = cobblestone.artifact_context(record.id, artifact.name)
        assert b"".join(cobblestone.decrypt_stream(unwrapped.data_key, ctx, [blob])) == plaintext
        unwrapped.check_plaintext_sha256(hashlib.sha256(plaintext).hexdigest())
        assert artifact.embedded is False
    types = {a.name: a.content_type for a in stored}
    assert types == {
        "data.bin": "application/octet-stream",
        "noext": "text/plain; charset=utf-8",
        "report.md": "text/markdown; charset=utf-8",
    }
    assert list(services.store.list(layout.embedded_prefix(record.id))) == []  # "off" mode writes no copy


def test_embedded_copy_only_for_small_files_when_enabled(tmp_path: Path, keypair: tuple[bytes, str]) -> None:
    services = make_services(embedded_artifacts="on", embedded_max_size=100)
    record = make_record(keypair[1])
    out = tmp_path / "out"
    out.mkdir()
    (out / "small.txt").write_text("tiny")
    (out / "large.txt").write_text("x" * 101)
    stored = {a.name: a for a in store(services, record, out)}
    assert stored["small.txt"].embedded and not stored["large.txt"].embedded
    assert stored["small.txt"].embedded_object_key(record.id) == layout.embedded_key(record.id, "small.txt", RUN)
    assert services.records.get_sealed(layout.embedded_key(record.id, "small.txt", RUN)) == b"tiny"
    assert stored["large.txt"].embedded_object_key(record.id) is None
    assert list(services.store.list(layout.embedded_prefix(record.id))) != []
    assert not services.store.exists(layout.embedded_key(record.id, "large.txt", RUN))


def test_limit_violation_uploads_nothing(tmp_path: Path, keypair: tuple[bytes, str]) -> None:
    services = make_services(max_artifact_count=2)
    record = make_record(keypair[1])
    out = tmp_path / "out"
    out.mkdir()
    for i in range(3):
        (out / f"f{i}").write_text("x")
    with pytest.raises(LimitExceeded, match="artifact limit exceeded: 3 files, max 2"):
        store(services, record, out)
    assert list(services.store.list("")) == []


def test_bad_public_key_fails_before_any_upload(tmp_path: Path) -> None:
    services = make_services()
    record = make_record("bm90LWEta2V5")
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.txt").write_text("x")
    with pytest.raises(ValidationFailed):
        store(services, record, out)
    assert list(services.store.list("")) == []


def test_storage_failure_leaves_nothing(tmp_path: Path, keypair: tuple[bytes, str]) -> None:
    class FailsOnSecond(MemoryObjectStore):
        calls = 0
        lock = threading.Lock()

        def put_file(self, key: str, src: Any, **kwargs: Any) -> None:
            with self.lock:
                self.calls += 1
                fail = self.calls == 2
            if fail:
                raise StorageError("boom")
            super().put_file(key, src, **kwargs)

    services = make_services(store=FailsOnSecond())
    record = make_record(keypair[1])
    out = tmp_path / "out"
    out.mkdir()
    for name in ("a.txt", "b.txt", "c.txt"):
        (out / name).write_text(name)
    with pytest.raises(StorageError, match="boom"):
        store(services, record, out)
    # What this run completed before the failure was under its own keys, and is gone: nothing to sweep.
    assert list(services.store.list("")) == []
    assert list(tmp_path.glob("tmp*")) == []  # nothing is written locally


def test_a_failed_cleanup_leaves_only_unnamed_objects(
    tmp_path: Path, keypair: tuple[bytes, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "STORE_CONCURRENCY", 1)  # a is stored before b fails

    class FailsOnSecondAndCannotDelete(MemoryObjectStore):
        calls = 0

        def put_file(self, key: str, src: Any, **kwargs: Any) -> None:
            self.calls += 1
            if self.calls == 2:
                raise StorageError("boom")
            super().put_file(key, src, **kwargs)

        def delete_many(self, keys: Any) -> None:
            raise StorageError("S3 gone")

    services = make_services(store=FailsOnSecondAndCannotDelete())
    record = make_record(keypair[1])
    out = tmp_path / "out"
    out.mkdir()
    for name in ("a.txt", "b.txt"):
        (out / name).write_text(name)
    with pytest.raises(StorageError, match="boom"):  # the upload's failure, not the cleanup's
        store(services, record, out)
    # The record names nothing, so the uploaded object is unnamed: invisible, and what the orphan sweep removes.
    assert unnamed_objects(services, record) == [layout.artifact_key(record.id, "a.txt", RUN)]


def test_artifacts_of_one_operation_upload_concurrently(tmp_path: Path, keypair: tuple[bytes, str]) -> None:
    """Two uploads meet at a barrier: one at a time, the first would wait there alone and the barrier break."""
    barrier = threading.Barrier(2, timeout=30)

    class Meets(MemoryObjectStore):
        def put_file(self, key: str, src: Any, **kwargs: Any) -> None:
            if key.endswith(("a.txt.enc", "b.txt.enc")):
                barrier.wait()
            super().put_file(key, src, **kwargs)

    services = make_services(store=Meets())
    secret, public = keypair
    record = make_record(public)
    out = tmp_path / "out"
    out.mkdir()
    names = [f"{c}.txt" for c in "abcdefghij"]
    for name in names:
        (out / name).write_text(name * 3)
    stored = store(services, record, out)
    assert [artifact.name for artifact in stored] == names  # in collect_outputs order, whatever finished first
    for artifact in stored:
        assert decrypt(services, record, artifact, secret) == artifact.name.encode() * 3


def test_a_failure_cancels_the_uploads_not_yet_started(tmp_path: Path, keypair: tuple[bytes, str]) -> None:
    """The first file fails while the others of the first wave wait for it: no file beyond that wave starts,
    and nothing stays stored."""
    failed = threading.Event()
    started: list[str] = []

    class FailsFirst(MemoryObjectStore):
        def put_file(self, key: str, src: Any, **kwargs: Any) -> None:
            started.append(key)
            if key.endswith("f00.txt.enc"):
                failed.set()
                raise StorageError("boom")
            assert failed.wait(timeout=30)
            super().put_file(key, src, **kwargs)

    services = make_services(store=FailsFirst())
    record = make_record(keypair[1])
    out = tmp_path / "out"
    out.mkdir()
    for n in range(3 * store_module.STORE_CONCURRENCY):
        (out / f"f{n:02d}.txt").write_text("x")
    with pytest.raises(StorageError, match="boom"):
        store(services, record, out)
    assert len(started) <= store_module.STORE_CONCURRENCY  # only the first wave ever reached the store
    assert list(services.store.list("")) == []


def test_a_large_upload_stops_when_another_fails(tmp_path: Path, keypair: tuple[bytes, str]) -> None:
    """A large file still encrypting when another fails stops at its next piece: its upload never completes (on
    S3 the multipart upload is aborted: the storage contract tests ``put_stream`` with a failing source)."""
    failed = threading.Event()

    class FailsSmall(MemoryObjectStore):
        def put_file(self, key: str, src: Any, **kwargs: Any) -> None:
            if key.endswith("small.txt.enc"):
                failed.set()
                raise StorageError("boom")
            super().put_file(key, src, **kwargs)

    services = make_services(store=FailsSmall())
    record = make_record(keypair[1])
    out = tmp_path / "out"
    out.mkdir()
    (out / "big.bin").write_bytes(os.urandom(4 * store_module.READ_SIZE))
    (out / "small.txt").write_text("x")
    real_read = store_module._Plaintext.pieces
    pieces_read: list[int] = []

    def slow_pieces(self: Any) -> Any:
        for piece in real_read(self):
            if self.item.name == "big.bin":
                pieces_read.append(len(piece))
                assert failed.wait(timeout=30)  # the big file's first piece waits until the small one failed
            yield piece

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(store_module._Plaintext, "pieces", slow_pieces)
        with pytest.raises(StorageError, match="boom"):
            store(services, record, out)
    assert len(pieces_read) < 4  # it stopped before reading the whole file
    assert list(services.store.list("")) == []


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("a.json", b'{"a": 1}', "application/json; charset=utf-8"),
        ("a.png", b"\x89PNG\r\n", "image/png"),
        ("blob", b"\x00\x01binary", "application/octet-stream"),
        ("utf8", "héllo wörld".encode(), "text/plain; charset=utf-8"),
        ("a.txt", b"\xff\xfe not utf8", "text/plain"),
    ],
)
def test_content_type_detection(name: str, content: bytes, expected: str) -> None:
    assert detect_content_type(name, content) == expected


# --- files swapped after collect_outputs checked them (review finding 3) ----------------------------------------


def _swap_after_collection(monkeypatch: pytest.MonkeyPatch, swap: Callable[[Path], None]) -> None:
    """What a process the agent left behind can do: change out/ between the limit checks and the reads."""
    real = store_module.collect_outputs

    def collect_then_swap(out_dir: Path, limits: Any) -> Any:
        files = real(out_dir, limits)
        swap(out_dir)
        return files

    monkeypatch.setattr(store_module, "collect_outputs", collect_then_swap)


def _run_bounded(target: Callable[[], object], unblock: Callable[[], None]) -> BaseException | None:
    """Run ``target`` in a thread; if it is still blocked after a few seconds, free it and fail."""
    outcome: list[BaseException | None] = []

    def call() -> None:
        try:
            target()
            outcome.append(None)
        except BaseException as exc:  # handed to the test thread
            outcome.append(exc)

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(timeout=5)
    if thread.is_alive():
        unblock()
        thread.join(timeout=5)
        pytest.fail("store_artifacts blocked on a file swapped into out/")
    return outcome[0]


def _open_fifo_writer(path: Path) -> None:
    with suppress(OSError):
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))


@pytest.mark.parametrize("embedded", ["off", "on"])
def test_a_fifo_swapped_in_neither_blocks_nor_uploads(
    tmp_path: Path, keypair: tuple[bytes, str], monkeypatch: pytest.MonkeyPatch, embedded: str
) -> None:
    services = make_services(embedded_artifacts=embedded, embedded_max_size=100)
    record = make_record(keypair[1])
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("hello")
    fifo = out / "notes.txt"

    def to_fifo(out_dir: Path) -> None:
        fifo.unlink()
        os.mkfifo(fifo)

    _swap_after_collection(monkeypatch, to_fifo)
    error = _run_bounded(lambda: store(services, record, out), lambda: _open_fifo_writer(fifo))
    assert isinstance(error, LimitExceeded) and error.code == "artifact_changed"
    assert error.detail == "invalid artifact: 'notes.txt' changed after the agent finished"
    assert list(services.store.list("")) == []


@pytest.mark.parametrize("target", ["/dev/zero", "secret"])
def test_a_symlink_swapped_in_is_not_followed(
    tmp_path: Path, keypair: tuple[bytes, str], monkeypatch: pytest.MonkeyPatch, target: str
) -> None:
    services = make_services(embedded_artifacts="on", embedded_max_size=100)
    record = make_record(keypair[1])
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.txt").write_text("agent output")
    secret = tmp_path / "secret"
    secret.write_text("worker-only")
    pointed = Path(target) if target.startswith("/") else secret

    def to_symlink(out_dir: Path) -> None:
        (out_dir / "a.txt").unlink()
        (out_dir / "a.txt").symlink_to(pointed)

    _swap_after_collection(monkeypatch, to_symlink)
    with pytest.raises(LimitExceeded) as caught:  # O_NOFOLLOW: the open itself refuses the link
        store(services, record, out)
    assert caught.value.code == "artifact_changed"
    assert list(services.store.list("")) == []


def test_every_read_comes_from_the_one_descriptor(tmp_path: Path, keypair: tuple[bytes, str]) -> None:
    """The path is replaced while the ciphertext uploads: the embedded copy still comes from the file that was
    encrypted (the open descriptor), so it matches the artifact's checksum instead of the replacement."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "small.txt").write_text("original")

    class SwapDuringUpload(MemoryObjectStore):
        def put_file(self, key: str, src: Any, **kwargs: Any) -> None:
            super().put_file(key, src, **kwargs)
            (out / "small.txt").unlink()
            (out / "small.txt").write_text("replaced")

    services = make_services(store=SwapDuringUpload(), embedded_artifacts="on", embedded_max_size=100)
    record = make_record(keypair[1])
    [stored] = store(services, record, out)
    assert stored.checksum == "sha256:" + hashlib.sha256(b"original").hexdigest()
    assert services.records.get_sealed(layout.embedded_key(record.id, "small.txt", RUN)) == b"original"


def test_a_file_that_grew_after_collection_is_refused(
    tmp_path: Path, keypair: tuple[bytes, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    services = make_services()
    record = make_record(keypair[1])
    out = tmp_path / "out"
    out.mkdir()
    (out / "log.txt").write_text("short")

    def grow(out_dir: Path) -> None:
        with (out_dir / "log.txt").open("a") as handle:
            handle.write("x" * 100_000)

    _swap_after_collection(monkeypatch, grow)
    with pytest.raises(LimitExceeded, match="changed after the agent finished"):
        store(services, record, out)
    assert list(services.store.list("")) == []


def test_an_interrupt_while_waiting_cancels_the_rest_and_cleans_up(tmp_path: Path, keypair: tuple[bytes, str]) -> None:
    """A Celery time limit or a signal raises in the waiting thread: the uploads still running stop, none starts,
    and what was stored is deleted."""
    stored_one = threading.Event()
    release = threading.Event()
    reached: list[str] = []

    class Blocks(MemoryObjectStore):
        def put_file(self, key: str, src: Any, **kwargs: Any) -> None:
            reached.append(key)
            super().put_file(key, src, **kwargs)
            stored_one.set()
            assert release.wait(timeout=30)

    class Interrupted(Exception):
        pass

    def interrupt(signum: int, frame: Any) -> None:
        release.set()
        raise Interrupted

    services = make_services(store=Blocks())
    record = make_record(keypair[1])
    out = tmp_path / "out"
    out.mkdir()
    for n in range(3 * store_module.STORE_CONCURRENCY):
        (out / f"f{n:02d}.txt").write_text("x")
    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        threading.Thread(target=lambda: stored_one.wait(30) and signal.setitimer(signal.ITIMER_REAL, 0.2)).start()
        with pytest.raises(Interrupted):
            store(services, record, out)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        release.set()
    assert len(reached) <= store_module.STORE_CONCURRENCY  # nothing started after the interrupt
    assert list(services.store.list("")) == []


@pytest.mark.parametrize("concurrency", [1, 8])
def test_a_run_that_loses_its_lease_stops_and_removes_what_it_stored(
    tmp_path: Path, keypair: tuple[bytes, str], monkeypatch: pytest.MonkeyPatch, concurrency: int
) -> None:
    monkeypatch.setattr(store_module, "STORE_CONCURRENCY", concurrency)
    services = make_services(embedded_artifacts="on", embedded_max_size=100)
    record = make_record(keypair[1])
    out = tmp_path / "out"
    out.mkdir()
    for name in ("a.txt", "b.txt", "c.txt"):
        (out / name).write_text(name)
    checks: list[int] = []

    class Lost(Exception):
        pass

    def ensure_owner() -> None:  # owner for the first two uploads, then not
        checks.append(1)
        if len(checks) > 2:
            raise Lost

    with pytest.raises(Lost):
        store(services, record, out, ensure_owner=ensure_owner)
    if concurrency == 1:  # a's ciphertext and embedded copy, then b's check fails: nothing after it
        assert len(checks) == 3
    # Whatever landed was under this run's own keys; the run deleted it on its way out.
    assert list(services.store.list("")) == []
