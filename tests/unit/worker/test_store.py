"""store_artifacts against the in-memory ObjectStore: what is uploaded decrypts for the grantee, and only then."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

from shared import layout
from shared.crypto import cobblestone, keywrap
from shared.crypto.keyring import Keyring
from shared.errors import StorageError, ValidationFailed
from shared.models import OperationRecord, utcnow
from shared.records import OperationStore
from shared.settings import Settings
from shared.storage.memory import MemoryObjectStore
from worker_service.agents.outputs import LimitExceeded
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

    stored = store_artifacts(services, record, out, scratch=tmp_path)

    assert [a.name for a in stored] == ["data.bin", "noext", "report.md"]
    for artifact in stored:
        plaintext = (out / artifact.name).read_bytes()
        blob = services.store.get_bytes(layout.artifact_key(record.id, artifact.name))
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
    stored = {a.name: a for a in store_artifacts(services, record, out, scratch=tmp_path)}
    assert stored["small.txt"].embedded and not stored["large.txt"].embedded
    assert services.records.get_sealed(layout.embedded_key(record.id, "small.txt")) == b"tiny"
    assert not services.store.exists(layout.embedded_key(record.id, "large.txt"))


def test_limit_violation_uploads_nothing(tmp_path: Path, keypair: tuple[bytes, str]) -> None:
    services = make_services(max_artifact_count=2)
    record = make_record(keypair[1])
    out = tmp_path / "out"
    out.mkdir()
    for i in range(3):
        (out / f"f{i}").write_text("x")
    with pytest.raises(LimitExceeded, match="artifact limit exceeded: 3 files, max 2"):
        store_artifacts(services, record, out, scratch=tmp_path)
    assert list(services.store.list("")) == []


def test_bad_public_key_fails_before_any_upload(tmp_path: Path) -> None:
    services = make_services()
    record = make_record("bm90LWEta2V5")
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.txt").write_text("x")
    with pytest.raises(ValidationFailed):
        store_artifacts(services, record, out, scratch=tmp_path)
    assert list(services.store.list("")) == []


def test_storage_failure_leaves_only_unnamed_objects(tmp_path: Path, keypair: tuple[bytes, str]) -> None:
    class FailsOnSecond(MemoryObjectStore):
        calls = 0

        def put_file(self, key: str, src: Any, **kwargs: Any) -> None:
            self.calls += 1
            if self.calls == 2:
                raise StorageError("boom")
            super().put_file(key, src, **kwargs)

    services = make_services(store=FailsOnSecond())
    record = make_record(keypair[1])
    out = tmp_path / "out"
    out.mkdir()
    for name in ("a.txt", "b.txt", "c.txt"):
        (out / name).write_text(name)
    with pytest.raises(StorageError):
        store_artifacts(services, record, out, scratch=tmp_path)
    # The record names nothing, so the one uploaded object is unnamed: invisible, and what cleanup removes.
    assert unnamed_objects(services, record) == [layout.artifact_key(record.id, "a.txt")]
    assert list(tmp_path.glob("tmp*")) == []  # encrypted temp files are gone


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
def test_content_type_detection(tmp_path: Path, name: str, content: bytes, expected: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    assert detect_content_type(name, path) == expected
