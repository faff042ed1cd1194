"""The SDK against the real stack: `strongroom api` + `strongroom worker` subprocesses, Valkey, SeaweedFS S3.

Downloads go through real presigned URLs (and, in one module-scoped API, through proxy mode), so checksums,
decryption, Range requests and the tamper checks are exercised exactly as a user's client would meet them.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from shared import layout
from shared.errors import IntegrityError, NotFound, NotGrantee
from shared.events import decode
from shared.models import GetOperationResponse
from shared.settings import Settings
from strongroom.client import StrongroomClient
from strongroom.client.download import partial_path
from strongroom.client.identity import Identity, generate_identity

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

ARTIFACTS = {"privacy_audit.md", "recommendations.json"}
TEXT = "Contact jane.doe@example.com or +1 415 555 0100.\n" * 200  # big enough for a multi-chunk report


@pytest.fixture(scope="module")
def stack(api_url: str, celery_worker: Any) -> str:
    return api_url


@pytest.fixture(scope="module")
def identity() -> Identity:
    return generate_identity()


@pytest.fixture(scope="module")
def client(stack: str, identity: Identity) -> Iterator[StrongroomClient]:
    with StrongroomClient(stack, identity) as c:
        yield c


def run_audit(client: StrongroomClient, text: str = TEXT) -> GetOperationResponse:
    created = client.create("privacy-audit", {"text": text, "files": {}}, retention_days=1)
    assert created.status == "pending"
    done = client.wait(created.id, timeout=120, initial_interval=0.2, max_interval=1.0)
    assert done.status == "succeeded", done.result
    return done


@pytest.fixture(scope="module")
def finished(client: StrongroomClient) -> GetOperationResponse:
    return run_audit(client)


def sha256_file(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def test_create_wait_and_list(client: StrongroomClient, finished: GetOperationResponse) -> None:
    assert finished.result is not None and finished.result.status == "ok"
    assert {a.name for a in finished.artifacts.artifacts} == ARTIFACTS
    assert finished.artifacts.count == 2
    listed = [op.id for op in client.iter_operations(page_size=1)]
    assert finished.id in listed
    assert finished.id in [op.id for op in client.list(status="succeeded").operations]
    assert finished.id not in [op.id for op in client.list(status="failed").operations]


def test_download_decrypts_and_checksums_match(
    client: StrongroomClient, finished: GetOperationResponse, tmp_path: Path
) -> None:
    for meta in finished.artifacts.artifacts:
        dest = tmp_path / meta.name
        result = client.download(finished.id, meta.name, dest)
        assert result.checksum == meta.checksum == sha256_file(dest)
        assert dest.stat().st_size == meta.size
    assert "jane.doe@example.com" not in (tmp_path / "privacy_audit.md").read_text()  # masked by the agent
    assert "Privacy audit" in (tmp_path / "privacy_audit.md").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(ARTIFACTS)


def test_range_fetch_matches_the_plaintext_slice(
    client: StrongroomClient, finished: GetOperationResponse, tmp_path: Path
) -> None:
    client.download(finished.id, "privacy_audit.md", tmp_path / "full")
    plain = (tmp_path / "full").read_bytes()
    size = len(plain)
    for start, end in [(0, 0), (3, 40), (size // 2, size - 1), (0, size - 1), (16380, min(16400, size - 1))]:
        if start <= end < size:
            assert client.fetch_range(finished.id, "privacy_audit.md", start, end) == plain[start : end + 1]


def test_resume_after_a_partial_download(
    client: StrongroomClient, finished: GetOperationResponse, object_store: Any, tmp_path: Path
) -> None:
    name = "privacy_audit.md"
    ciphertext = object_store.get_bytes(stored_key(object_store, finished.id, name))
    dest = tmp_path / name
    cut = len(ciphertext) // 2
    partial_path(dest, client.ticket(finished.id, name)).write_bytes(ciphertext[:cut])  # an interrupted run
    result = client.download(finished.id, name, dest)
    assert result.resumed_from == cut
    meta = next(a for a in finished.artifacts.artifacts if a.name == name)
    assert sha256_file(dest) == meta.checksum
    assert [p.name for p in tmp_path.iterdir()] == [name]


def test_swapped_objects_are_rejected_and_leave_no_file(
    client: StrongroomClient, object_store: Any, tmp_path: Path
) -> None:
    op = run_audit(client, "nothing to see\n")
    keys = [stored_key(object_store, op.id, name) for name in sorted(ARTIFACTS)]
    first, second = (object_store.get_bytes(k) for k in keys)
    object_store.put_bytes(keys[0], second)
    object_store.put_bytes(keys[1], first)
    for name in sorted(ARTIFACTS):
        with pytest.raises(IntegrityError):
            client.download(op.id, name, tmp_path / name)
    assert list(tmp_path.iterdir()) == []


def test_someone_else_cannot_read(stack: str, finished: GetOperationResponse) -> None:
    with StrongroomClient(stack, generate_identity()) as stranger, pytest.raises(NotGrantee):
        stranger.get(finished.id)


@pytest.fixture(scope="module")
def beat(beat_factory: Callable[..., Any]) -> Any:
    """Beat drives the audit persister that turns the API's events into the S3 access log."""
    return beat_factory()


def test_delete_then_access_log(client: StrongroomClient, beat: Any, tmp_path: Path) -> None:
    op = run_audit(client, "mail me: a@b.example\n")
    client.download(op.id, "recommendations.json", tmp_path / "r.json")
    client.delete(op.id, "recommendations.json")
    assert [a.name for a in client.get(op.id).artifacts.artifacts] == ["privacy_audit.md"]
    assert [a.name for a in client.artifacts(op.id).artifacts] == ["privacy_audit.md"]
    with pytest.raises(NotFound):
        client.download(op.id, "recommendations.json", tmp_path / "again.json")
    assert not (tmp_path / "again.json").exists()

    def logged() -> set[str]:
        return {str(e.get("action")) for e in client.access_log(op.id).events}

    wait_until(lambda: {"operation.create", "artifact.delete"} <= logged(), timeout=30)
    log = client.access_log(op.id)
    assert log.chain_verified is True
    times = [str(e["time"]) for e in log.events]
    assert times == sorted(times)  # oldest first
    assert any(e.get("artifact") == "recommendations.json" for e in log.events)


def wait_until(check: Callable[[], bool], *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.5)


# --- proxy delivery: the same client, bytes through the API ---


@pytest.fixture(scope="module")
def proxy_client(api_factory: Callable[..., Any], celery_worker: Any, identity: Identity) -> Iterator[StrongroomClient]:
    handle = api_factory(STRONGROOM_DELIVERY_MODE="proxy")
    try:
        with StrongroomClient(handle.url, identity) as c:
            yield c
    finally:
        handle.stop()


def test_proxy_mode_download_range_and_resume(
    proxy_client: StrongroomClient,
    finished: GetOperationResponse,
    object_store: Any,
    settings: Settings,
    tmp_path: Path,
) -> None:
    name = "privacy_audit.md"
    meta = next(a for a in finished.artifacts.artifacts if a.name == name)
    audit = redis.Redis.from_url(settings.redis_url)
    newest = audit.xrevrange(layout.REDIS_AUDIT_STREAM, count=1)
    since = b"(" + (newest[0][0] if newest else b"0-0")
    ticket = proxy_client.ticket(finished.id, name)
    assert ticket.url is None  # served by the API itself
    dest = tmp_path / name
    proxy_client.download(finished.id, name, dest)
    assert sha256_file(dest) == meta.checksum
    plain = dest.read_bytes()
    assert proxy_client.fetch_range(finished.id, name, 5, 25) == plain[5:26]
    dest.unlink()
    ciphertext = object_store.get_bytes(stored_key(object_store, finished.id, name))
    partial_path(dest, ticket).write_bytes(ciphertext[:100])
    assert proxy_client.download(finished.id, name, dest).resumed_from == 100
    assert sha256_file(dest) == meta.checksum
    # Review finding 2: a ticket is artifact.url, only a byte stream is artifact.download (one each for the two
    # downloads and one for the single-chunk range), never a download for the ticket request.
    events = [decode(f) for _, f in audit.xrange(layout.REDIS_AUDIT_STREAM, min=since)]
    mine = [e.action for e in events if e.operation_id == finished.id and e.artifact == name]
    assert sorted(mine) == ["artifact.download"] * 3 + ["artifact.url"] * 4


def stored_key(store: Any, operation_id: str, name: str) -> str:
    """The one object holding artifact ``name`` (keys are per run; the served shape does not name the run)."""
    [key] = [i.key for i in store.list(layout.artifacts_prefix(operation_id)) if i.key.endswith(f"/{name}.enc")]
    return key
