"""The operation lifecycle in-process: real Redis (locks, lease, cancel key, events), in-memory S3, real agents."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

from shared import events, layout
from shared.crypto import cobblestone, keywrap
from shared.crypto.keyring import Keyring
from shared.errors import Conflict, StorageError
from shared.models import OperationRecord, utcnow
from shared.records import OperationStore
from shared.settings import Settings
from shared.storage.memory import MemoryObjectStore
from worker_service.pipeline import lease
from worker_service.pipeline import run as pipeline
from worker_service.services import Services

# Needs the session's real Redis, so it is not a pure unit test.
pytestmark = pytest.mark.integration

TEST_DB = 12
AGENT = str(Path(__file__).resolve().parents[2] / "agents" / "misbehave.py")


def agents(**commands: list[str]) -> str:
    return json.dumps({name: {"command": [sys.executable, AGENT, *argv]} for name, argv in commands.items()})


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
    cancelled = pipeline.request_cancel(services, record.id, actor=record.grantee)
    assert cancelled.status == "cancelled" and cancelled.result is not None
    assert pipeline.run_operation(services, record.id) is None
    with pytest.raises(Conflict):
        pipeline.request_cancel(services, record.id)


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


def test_reclaim_after_a_dead_worker_removes_its_leftovers(
    client: redis.Redis, tmp_path: Path, keypair: tuple[bytes, str]
) -> None:
    services = make_services(client, tmp_path)
    record = create(services, keypair[1], text="nothing")
    services.records.put(record.evolve(status="running", started_at=utcnow()))  # the dead worker's claim
    leftover = layout.artifact_key(record.id, "half-written.txt", layout.new_run_id())
    services.store.put_bytes(leftover, b"orphan")

    final = pipeline.run_operation(services, record.id, token="new")

    assert final is not None and final.status == "succeeded"
    assert not services.store.exists(leftover)
    assert sorted(stored_keys(services, record)) == sorted(a.object_key(record.id) for a in final.artifacts)


def test_live_lease_elsewhere_means_no_second_run(
    client: redis.Redis, tmp_path: Path, keypair: tuple[bytes, str]
) -> None:
    services = make_services(client, tmp_path)
    record = create(services, keypair[1], text="x")
    services.records.put(record.evolve(status="running", started_at=utcnow()))
    client.set(layout.redis_run_lease(record.id), "other-worker", ex=30)
    assert pipeline.run_operation(services, record.id, token="mine") is None
    assert services.records.get(record.id).status == "running"


def test_cancel_while_running_kills_the_group(client: redis.Redis, tmp_path: Path, keypair: tuple[bytes, str]) -> None:
    pidfile = tmp_path / "pids.json"
    services = make_services(client, tmp_path, agents=agents(stuck=["stubborn", str(pidfile)]))
    record = create(services, keypair[1], agent="stuck")

    def cancel_when_started() -> None:
        deadline = time.monotonic() + 20
        while not (pidfile.exists() and pidfile.stat().st_size) and time.monotonic() < deadline:
            time.sleep(0.05)
        pipeline.request_cancel(services, record.id, actor=record.grantee)

    canceller = threading.Thread(target=cancel_when_started)
    canceller.start()
    started = time.monotonic()
    final = pipeline.run_operation(services, record.id)
    canceller.join()

    assert final is not None and final.status == "cancelled"
    assert final.result is not None and final.result.summary == "cancelled by grantee"
    assert time.monotonic() - started < 15
    for pid in json.loads(pidfile.read_text()):
        deadline = time.monotonic() + 5
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(pid)
    assert not client.exists(layout.redis_cancel_key(record.id))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


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
    failed = pipeline.fail_operation(services, record.id, "storage unavailable", token="t1")
    assert failed is not None and failed.status == "failed"
    assert failed.result is not None and failed.result.summary == "storage unavailable"
    assert pipeline.fail_operation(services, record.id, "again", token="t1") == failed


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
