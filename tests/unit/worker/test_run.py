"""The operation lifecycle in-process: real Redis (locks, lease, cancel key, events), in-memory S3, real agents."""

from __future__ import annotations

import errno
import hashlib
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

from shared import events, layout
from shared.cancel import request_cancel
from shared.crypto import cobblestone, keywrap
from shared.crypto.keyring import Keyring
from shared.errors import Conflict, StorageError, WorkerDiskFull
from shared.models import OperationRecord, utcnow
from shared.records import OperationStore
from shared.settings import Settings
from shared.storage.memory import MemoryObjectStore
from tests.agents.harness import agents_env
from worker_service.agents import sandbox
from worker_service.agents.sandbox import SandboxUnavailable
from worker_service.pipeline import lease
from worker_service.pipeline import run as pipeline
from worker_service.pipeline import store as store_module
from worker_service.pipeline.store import unnamed_objects
from worker_service.services import Services

# Needs the session's real Redis, so it is not a pure unit test.
pytestmark = pytest.mark.integration

TEST_DB = 12


def agents(**commands: list[str]) -> str:
    return agents_env(**commands)


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(f"{redis_url.rsplit('/', 1)[0]}/{TEST_DB}")
    connection.flushdb()
    yield connection
    connection.flushdb()
    connection.close()


@pytest.fixture
def keypair() -> tuple[bytes, str]:
    return keywrap.generate_encryption_keypair()


def make_services(client: redis.Redis, tmp_path: Path, **settings: Any) -> Services:
    keyring = Keyring.from_json(Keyring.generate_json("k1"))
    store = settings.pop("store", None) or MemoryObjectStore()
    config = Settings.from_env(
        {"REDIS_URL": "redis://127.0.0.1:1/0"},
        work_dir=tmp_path / "work",
        max_execution_time=settings.pop("max_execution_time", 30),
        **settings,
    )
    return Services(config, client, store, keyring, OperationStore(store, keyring, client))


def create(services: Services, public_key: str, agent: str = "privacy-audit", **agent_input: Any) -> OperationRecord:
    now = utcnow()
    record = OperationRecord(
        id=layout.new_operation_id(agent),
        agent=agent,
        grantee="0x" + "cd" * 20,
        encryption_public_key=public_key,
        created_at=now,
        expires_at=now + timedelta(days=7),
    )
    services.records.create(record, agent_input)
    return record


def stored_keys(services: Services, record: OperationRecord) -> list[str]:
    prefixes = (layout.artifacts_prefix(record.id), layout.embedded_prefix(record.id))
    return [info.key for prefix in prefixes for info in services.store.list(prefix)]


def actions(client: redis.Redis, operation_id: str) -> list[str]:
    found = [events.decode(fields) for _, fields in client.xrange(layout.REDIS_AUDIT_STREAM)]
    return [e.action for e in found if e.operation_id == operation_id]


def test_privacy_audit_succeeds_and_decrypts(client: redis.Redis, tmp_path: Path, keypair: tuple[bytes, str]) -> None:
    secret, public = keypair
    services = make_services(client, tmp_path)
    record = create(services, public, text="mail me at eve@example.com")

    final = pipeline.run_operation(services, record.id, token="t1")

    assert final is not None and final.status == "succeeded"
    assert final == services.records.get(record.id)
    assert final.result is not None and final.result.status == "ok"
    assert final.result.summary.startswith("1 finding(s)")
    assert final.started_at is not None and final.finished_at is not None
    assert [a.name for a in final.artifacts] == ["privacy_audit.md", "recommendations.json"]
    report = final.artifact("privacy_audit.md")
    assert report is not None
    blob = services.store.get_bytes(report.object_key(record.id))
    key = keywrap.unwrap_data_key(secret, report.encryption.wrapped_key.model_dump(), record.id, report.name)
    text = b"".join(
        cobblestone.decrypt_stream(key.data_key, cobblestone.artifact_context(record.id, report.name), [blob])
    )
    assert b"e***@example.com" in text
    assert not client.exists(layout.redis_run_lease(record.id))
    assert actions(client, record.id) == [
        "operation.started",
        "artifact.stored",
        "artifact.stored",
        "operation.finished",
    ]
    assert list((tmp_path / "work").iterdir()) == []  # the working directory is gone

    assert pipeline.run_operation(services, record.id, token="t2") is None  # redelivery: no-op
    assert services.records.get(record.id) == final


def test_cancelled_pending_operation_never_runs(
    client: redis.Redis, tmp_path: Path, keypair: tuple[bytes, str]
) -> None:
    services = make_services(client, tmp_path)
    record = create(services, keypair[1], text="x")
    cancelled = request_cancel(services.records, services.redis, record.id)
    assert cancelled.status == "cancelled" and cancelled.result is not None
    assert pipeline.run_operation(services, record.id) is None
    with pytest.raises(Conflict):
        request_cancel(services.records, services.redis, record.id)


@pytest.mark.parametrize(
    ("argv", "limits", "summary"),
    [
        (["files", "6"], {"max_artifact_count": 5}, "artifact limit exceeded: 6 files, max 5"),
        (
            ["big", "2000"],
            {"max_artifact_size": 1000},
            "artifact size limit exceeded: 'big.bin' is 2000 bytes, max 1000",
        ),
        (["slow", "30"], {"max_execution_time": 1}, "time limit exceeded: ran longer than 1 s"),
        (["symlink"], {}, "invalid artifact: 'link.txt' is a symlink; only regular files in out/ are stored"),
        (["fail"], {}, "agent failed (exit status 3)"),
    ],
)
def test_limit_violations_fail_and_store_nothing(
    client: redis.Redis, tmp_path: Path, keypair: tuple[bytes, str], argv: list[str], limits: dict[str, int],
    summary: str,
) -> None:  # fmt: skip
    services = make_services(client, tmp_path, agents=agents(bad=argv), **limits)
    record = create(services, keypair[1], agent="bad")
    final = pipeline.run_operation(services, record.id)
    assert final is not None and final.status == "failed"
    assert final.result is not None and final.result.summary == summary
    assert final.artifacts == [] and stored_keys(services, record) == []


def test_disk_limit(client: redis.Redis, tmp_path: Path, keypair: tuple[bytes, str]) -> None:
    services = make_services(client, tmp_path, agents=agents(hog=["disk", str(40 << 20)]), max_disk_usage=4 << 20)
    record = create(services, keypair[1], agent="hog")
    final = pipeline.run_operation(services, record.id)
    assert final is not None and final.status == "failed" and final.result is not None
    assert final.result.summary.startswith("disk limit exceeded: working directory used ")
    assert final.result.summary.endswith(f"bytes, max {4 << 20}")


def test_cancel_while_running_kills_the_group(client: redis.Redis, tmp_path: Path, keypair: tuple[bytes, str]) -> None:
    services = make_services(client, tmp_path, agents=agents(stuck=["stubborn", "out/pids.json"]))
    record = create(services, keypair[1], agent="stuck")

    def started_agent() -> bool:  # the agent writes its (namespace) pids into its out/
        return any(path.stat().st_size for path in (tmp_path / "work").glob("strongroom-agent-*/out/pids.json"))

    def cancel_when_started() -> None:
        deadline = time.monotonic() + 20
        while not started_agent() and time.monotonic() < deadline:
            time.sleep(0.05)
        request_cancel(services.records, services.redis, record.id)

    canceller = threading.Thread(target=cancel_when_started)
    canceller.start()
    started = time.monotonic()
    final = pipeline.run_operation(services, record.id)
    canceller.join()

    assert final is not None and final.status == "cancelled"
    assert final.result is not None and final.result.summary == "cancelled by grantee"
    assert time.monotonic() - started < 15
    stubborn = subprocess.run(["pgrep", "-f", "time.sleep\\(600\\)"], capture_output=True, check=False)
    assert stubborn.returncode == 1  # the agent and its child: gone with their PID namespace
    assert not client.exists(layout.redis_cancel_key(record.id))


def test_storage_error_is_retried_with_the_same_token(
    client: redis.Redis, tmp_path: Path, keypair: tuple[bytes, str]
) -> None:
    class Flaky(MemoryObjectStore):
        failures = 1

        def put_file(self, key: str, src: Any, **kwargs: Any) -> None:
            if key.endswith("recommendations.json.enc") and self.failures:
                self.failures -= 1
                raise StorageError("S3 hiccup")
            super().put_file(key, src, **kwargs)

    services = make_services(client, tmp_path, store=Flaky())
    record = create(services, keypair[1], text="x")
    with pytest.raises(StorageError):
        pipeline.run_operation(services, record.id, token="task-1")
    assert services.records.get(record.id).status == "running"  # nothing visible yet
    assert services.records.get(record.id).artifacts == []
    assert not client.exists(layout.redis_run_lease(record.id))  # given up for the retry

    final = pipeline.run_operation(services, record.id, token="task-1")  # Celery's retry keeps the task id
    assert final is not None and final.status == "succeeded" and len(final.artifacts) == 2


def test_unknown_agent_and_bad_input_fail_cleanly(
    client: redis.Redis, tmp_path: Path, keypair: tuple[bytes, str]
) -> None:
    services = make_services(client, tmp_path)
    record = create(services, keypair[1], agent="ghost")
    final = pipeline.run_operation(services, record.id)
    assert final is not None and final.status == "failed" and final.result is not None
    assert final.result.summary == "unknown agent 'ghost'"
    bad = create(services, keypair[1], files={"../x": "aGk="})
    final = pipeline.run_operation(services, bad.id)
    assert final is not None and final.result is not None
    assert final.result.summary.startswith("invalid input: artifact name")


def test_fail_operation_is_a_no_op_once_finished(
    client: redis.Redis, tmp_path: Path, keypair: tuple[bytes, str]
) -> None:
    services = make_services(client, tmp_path)
    record = create(services, keypair[1], text="x")
    services.records.put(record.evolve(status="running", started_at=utcnow()))
    failed = pipeline.fail_operation(services, record.id, "storage unavailable")
    assert failed is not None and failed.status == "failed"
    assert failed.result is not None and failed.result.summary == "storage unavailable"
    assert pipeline.fail_operation(services, record.id, "again") == failed


def test_a_slow_upload_keeps_the_run_lease(
    client: redis.Redis, tmp_path: Path, keypair: tuple[bytes, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Uploads run without the agent watchdog; the lease must not lapse meanwhile, or the monitor would hand the
    operation to another worker while this one is still storing it."""
    monkeypatch.setattr(lease, "LEASE_TTL", 1)
    monkeypatch.setattr(lease, "LEASE_REFRESH", 0.2)
    seen: list[bool] = []

    class Slow(MemoryObjectStore):
        def put_file(self, key: str, src: Any, **kwargs: Any) -> None:
            time.sleep(1.5)  # longer than the lease TTL
            seen.append(bool(client.exists(layout.redis_run_lease(operation_id))))
            super().put_file(key, src, **kwargs)

    services = make_services(client, tmp_path, store=Slow())
    record = create(services, keypair[1], text="x")
    operation_id = record.id
    final = pipeline.run_operation(services, record.id, token="task-1")
    assert final is not None and final.status == "succeeded"
    assert seen and all(seen)


# --- two runs of one operation (review findings 2 and 5) ---------------------------------------------------------


def _lapse_and_reclaim(services: Services, operation_id: str, token: str) -> OperationRecord | None:
    """What the monitor's redelivery does once a worker went quiet past the TTL: the lease lapses, a new task runs."""
    services.redis.delete(layout.redis_run_lease(operation_id))
    return pipeline.run_operation(services, operation_id, token=token)


def test_a_stale_refresh_does_not_steal_a_new_owners_lease(
    client: redis.Redis, tmp_path: Path, keypair: tuple[bytes, str]
) -> None:
    services = make_services(client, tmp_path)
    record = create(services, keypair[1], text="x")
    claimed = pipeline.claim(services, record.id, "t1")
    assert claimed is not None
    stale = lease.RunProbe(claimed[1])
    client.delete(layout.redis_run_lease(record.id))  # T1 paused longer than the TTL
    second = pipeline.claim(services, record.id, "t2")
    assert second is not None
    new_value = client.get(layout.redis_run_lease(record.id))

    stale._last_refresh -= lease.LEASE_REFRESH  # T1 wakes up and its watchdog refreshes
    assert stale() is True  # stop the agent
    assert stale.lease_lost and not stale.owns_lease()
    assert client.get(layout.redis_run_lease(record.id)) == new_value  # T2 still owns it
    assert client.ttl(layout.redis_run_lease(record.id)) > 0
    with pytest.raises(lease.LeaseLost):
        stale.ensure_owner()
    assert second[1].refresh() and second[1].held()


def test_a_stale_refresh_does_not_resurrect_a_lapsed_lease(client: redis.Redis) -> None:
    held = lease.RunLease.new(client, layout.new_operation_id("privacy-audit"), "t1")
    held.take()
    client.delete(held.key)
    assert not held.refresh()
    assert not client.exists(held.key)


def test_interleaved_runs_never_destroy_each_others_artifacts(
    client: redis.Redis, tmp_path: Path, keypair: tuple[bytes, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """T1 is cut off from Redis mid-upload (its lease lapses), T2 re-claims and finishes, then T1's upload lands
    and T1 tries the next one. T1 must stop, and must neither overwrite nor delete what T2's record names."""
    monkeypatch.setattr(lease, "LEASE_REFRESH", 0.2)  # T1's keep-alive tries to refresh while T2 runs
    # The staged order (T1's first upload, then T2 whole, then T1's next) needs T1's artifacts one at a time; with
    # concurrent uploads, ``test_store`` covers a lease lost while several are in flight.
    monkeypatch.setattr(store_module, "STORE_CONCURRENCY", 1)
    secret, public = keypair
    t1_uploads: list[str] = []
    t2_final: list[OperationRecord | None] = []

    class Interleaved(MemoryObjectStore):
        def put_file(self, key: str, src: Any, **kwargs: Any) -> None:
            if t2_final:  # T2 has finished: this is T1 again
                t1_uploads.append(key)
            elif not t1_uploads:  # T1's first upload: it stalls, T2 takes over and completes first
                t1_uploads.append(key)
                t2_final.append(_lapse_and_reclaim(services, operation_id, "t2"))
                time.sleep(0.5)  # T1's keep-alive thread wakes up meanwhile
            super().put_file(key, src, **kwargs)

    services = make_services(client, tmp_path, store=Interleaved())
    record = create(services, public, text="mail eve@example.com or call +44 20 7946 0958")
    operation_id = record.id

    with pytest.raises(lease.LeaseLost):
        pipeline.run_operation(services, record.id, token="t1")

    final = services.records.get(record.id)
    assert t2_final == [final] and final.status == "succeeded" and len(final.artifacts) == 2
    assert len(t1_uploads) == 1  # T1 stopped before its second upload
    named = {a.object_key(record.id) for a in final.artifacts}
    assert t1_uploads[0] not in named  # T1's late upload went to its own key
    for artifact in final.artifacts:  # everything T2's record names is T2's, intact
        blob = services.store.get_bytes(artifact.object_key(record.id))
        assert artifact.ciphertext_checksum == "sha256:" + hashlib.sha256(blob).hexdigest()
        key = keywrap.unwrap_data_key(secret, artifact.encryption.wrapped_key.model_dump(), record.id, artifact.name)
        ctx = cobblestone.artifact_context(record.id, artifact.name)
        plaintext = b"".join(cobblestone.decrypt_stream(key.data_key, ctx, [blob]))
        assert artifact.checksum == "sha256:" + hashlib.sha256(plaintext).hexdigest()
    assert not client.exists(layout.redis_run_lease(record.id))  # T1 did not re-create it
    # T1's late object was under T1's own run key: T1 deleted it when its next upload found the lease gone.
    assert unnamed_objects(services, final) == []
    assert not services.store.exists(t1_uploads[0])

    assert pipeline.run_operation(services, record.id, token="t1") is None  # T1's retry: nothing left to do
    assert services.records.get(record.id) == final


def test_a_run_whose_lease_lapsed_does_not_write_its_artifacts(
    client: redis.Redis, tmp_path: Path, keypair: tuple[bytes, str]
) -> None:
    """Nobody re-claimed yet, but the orphan sweep may have deleted the uploads (no live lease): retry, never name
    them."""

    class LapsesDuringUpload(MemoryObjectStore):
        def put_file(self, key: str, src: Any, **kwargs: Any) -> None:
            super().put_file(key, src, **kwargs)
            if key.endswith("recommendations.json.enc"):
                client.delete(layout.redis_run_lease(operation_id))

    services = make_services(client, tmp_path, store=LapsesDuringUpload())
    record = create(services, keypair[1], text="x")
    operation_id = record.id
    with pytest.raises(lease.LeaseLost):
        pipeline.run_operation(services, record.id, token="t1")
    current = services.records.get(record.id)
    assert current.status == "running" and current.artifacts == []


def _running_with_uploads(services: Services, public: str, holder: str | None) -> tuple[OperationRecord, str]:
    record = create(services, public, text="x")
    services.records.put(record.evolve(status="running", started_at=utcnow()))
    uploaded = layout.artifact_key(record.id, "privacy_audit.md", layout.new_run_id())
    services.store.put_bytes(uploaded, b"the live run's ciphertext")
    if holder is not None:
        services.redis.set(layout.redis_run_lease(record.id), holder, ex=30)
    return record, uploaded


@pytest.mark.parametrize("holder", ["t2", "t1"])
def test_on_failure_leaves_an_operation_a_live_run_holds_alone(
    client: redis.Redis, tmp_path: Path, keypair: tuple[bytes, str], monkeypatch: pytest.MonkeyPatch, holder: str
) -> None:
    """Each failed attempt released its lease, so a lease now is a live run's: another task's, or a redelivered
    copy of this very task (same id)."""
    from worker_service import tasks

    services = make_services(client, tmp_path)
    monkeypatch.setattr(tasks, "services", lambda: services)
    record, uploaded = _running_with_uploads(services, keypair[1], holder=f"{holder}/{layout.new_run_id()}")
    lease_value = client.get(layout.redis_run_lease(record.id))

    tasks.run_operation_task.on_failure(StorageError("S3 down"), "t1", (), {"operation_id": record.id}, None)

    current = services.records.get(record.id)
    assert current.status == "running" and current.result is None
    assert client.get(layout.redis_run_lease(record.id)) == lease_value
    assert services.store.exists(uploaded)


def test_on_failure_fails_an_abandoned_run(
    client: redis.Redis, tmp_path: Path, keypair: tuple[bytes, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from worker_service import tasks

    services = make_services(client, tmp_path)
    monkeypatch.setattr(tasks, "services", lambda: services)
    record, uploaded = _running_with_uploads(services, keypair[1], holder=None)

    tasks.run_operation_task.on_failure(StorageError("S3 down"), "t1", (), {"operation_id": record.id}, None)

    current = services.records.get(record.id)
    assert current.status == "failed" and current.result is not None
    assert current.result.summary == tasks.STORAGE_GAVE_UP
    assert not client.exists(layout.redis_run_lease(record.id))
    assert services.store.exists(uploaded)  # an unnamed leftover: the age-gated orphan sweep's to remove


def test_a_full_worker_disk_is_retried_alerted_and_named_when_retries_run_out(
    client: redis.Redis, tmp_path: Path, keypair: tuple[bytes, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 10 item 9: ENOSPC is not "internal error": the attempt raises ``WorkerDiskFull`` (a transient error,
    so Celery retries it), leaves the operation running with its lease released and nothing stored, marks the
    worker for the resource monitor, and only a run out of retries fails with ``worker_disk_full``."""
    from worker_service import tasks

    services = make_services(client, tmp_path)
    monkeypatch.setattr(tasks, "services", lambda: services)
    record = create(services, keypair[1], text="x")

    def full(*_: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pipeline, "write_input", full)
    with pytest.raises(WorkerDiskFull) as raised:
        pipeline.run_operation(services, record.id, token="t1")
    assert isinstance(raised.value, pipeline.TRANSIENT_ERRORS)
    current = services.records.get(record.id)
    assert current.status == "running" and current.artifacts == []
    assert not client.exists(layout.redis_run_lease(record.id))
    assert client.zcard(layout.REDIS_WORKER_DISK_FULL) == 1
    assert unnamed_objects(services, current) == []

    tasks.run_operation_task.on_failure(raised.value, "t1", (), {"operation_id": record.id}, None)
    current = services.records.get(record.id)
    assert current.status == "failed" and current.result is not None
    assert current.result.summary == tasks.DISK_FULL_GAVE_UP


def test_an_unavailable_sandbox_fails_the_operation_with_its_reason(
    client: redis.Redis, tmp_path: Path, keypair: tuple[bytes, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fail closed: no agent runs unsandboxed, and the grantee reads why instead of a generic internal error."""

    def missing() -> str:
        raise SandboxUnavailable("STRONGROOM_AGENT_SANDBOX", "is 'bwrap' but no bwrap was found")

    monkeypatch.setattr(sandbox, "find_bwrap", missing)
    services = make_services(client, tmp_path)
    record = create(services, keypair[1], text="x")
    final = pipeline.run_operation(services, record.id, token="task-1")
    assert final is not None and final.status == "failed"
    assert final.result is not None
    assert final.result.summary.startswith("agent sandbox unavailable: STRONGROOM_AGENT_SANDBOX")
    assert final.artifacts == []
