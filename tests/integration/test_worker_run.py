"""A real `strongroom worker` against real Redis and SeaweedFS: success, cancel, Redis restart, heartbeat."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from typing import Any

import pytest
from celery import Celery

from shared import layout
from shared.cancel import request_cancel
from shared.crypto import keywrap
from shared.settings import Settings
from tests.agents.harness import (
    agents_env,
    client_services,
    create_operation,
    decrypt_artifact,
    producer,
    send_run,
    stored_keys,
    wait_status,
)
from worker_service.services import Services

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def worker_env() -> dict[str, str]:
    return {"STRONGROOM_AGENTS": agents_env(stuck=["stubborn", "out/pids.json"])}


@pytest.fixture(scope="module")
def worker(worker_factory: Callable[..., Any], worker_env: dict[str, str]) -> Any:
    handle = worker_factory(**worker_env)
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def services(settings: Settings) -> Services:
    return client_services(settings)


@pytest.fixture(scope="module")
def app(settings: Settings) -> Celery:
    return producer(settings)


def _stubborn_left() -> bool:
    return subprocess.run(["pgrep", "-f", "time.sleep\\(600\\)"], capture_output=True, check=False).returncode == 0


def test_privacy_audit_operation_succeeds_and_decrypts(worker: Any, services: Services, app: Celery) -> None:
    secret, public = keywrap.generate_encryption_keypair()
    record = create_operation(services, public, "privacy-audit", text="ping bob@example.com from 198.51.100.4")
    send_run(app, record.id)

    final = wait_status(services, record.id, {"succeeded", "failed", "cancelled"})

    assert final.status == "succeeded", final.result
    assert final.result is not None and final.result.summary.startswith("2 finding(s)")
    report = decrypt_artifact(services, final, "privacy_audit.md", secret).decode()
    assert "| input text | 1 | email | `b***@example.com` |" in report
    recommendations = json.loads(decrypt_artifact(services, final, "recommendations.json", secret))
    assert recommendations["findings"] == 2
    assert stored_keys(services, record.id) == sorted(a.object_key(record.id) for a in final.artifacts)
    assert not services.redis.exists(layout.redis_run_lease(record.id))


def test_cancel_kills_the_agent_process_group(worker: Any, services: Services, app: Celery, settings: Settings) -> None:
    _, public = keywrap.generate_encryption_keypair()
    record = create_operation(services, public, "stuck")
    send_run(app, record.id)
    deadline = time.monotonic() + 30
    assert settings.work_dir is not None
    while not any(p.stat().st_size for p in settings.work_dir.glob("strongroom-agent-*/out/pids.json")):
        assert time.monotonic() < deadline, "the agent never started"
        time.sleep(0.1)
    assert _stubborn_left()
    assert wait_status(services, record.id, {"running"}).status == "running"

    requested = time.monotonic()
    request_cancel(services.records, services.redis, record.id)  # exactly what the API does
    final = wait_status(services, record.id, {"cancelled", "failed", "succeeded"}, timeout=20)

    assert final.status == "cancelled"
    assert time.monotonic() - requested < 10  # SIGTERM ignored: SIGKILL after the grace period
    assert not _stubborn_left()  # the agent and its child ended with their PID namespace
    assert stored_keys(services, record.id) == []


def test_heartbeat_registers_the_worker(worker: Any, services: Services) -> None:
    score = services.redis.zscore(layout.REDIS_WORKERS, worker.hostname)
    assert score is not None and time.time() - score < 60


def test_redis_restart_loses_nothing_stored(worker: Any, services: Services, app: Celery, redis_server: Any) -> None:
    secret, public = keywrap.generate_encryption_keypair()
    before = create_operation(services, public, "privacy-audit", text="call +44 20 7946 0958")
    send_run(app, before.id)
    done = wait_status(services, before.id, {"succeeded", "failed"})
    assert done.status == "succeeded"

    redis_server.stop()
    redis_server.start()

    assert services.records.get(before.id) == done  # everything durable lives in S3
    assert b"phone_number" in decrypt_artifact(services, done, "privacy_audit.md", secret)
    after = create_operation(services, public, "privacy-audit", text="nothing here")
    deadline = time.monotonic() + 60
    while True:  # the worker reconnects to the broker on its own
        try:
            send_run(app, after.id)
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    assert wait_status(services, after.id, {"succeeded", "failed"}, timeout=90).status == "succeeded"
