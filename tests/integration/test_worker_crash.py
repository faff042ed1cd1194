"""kill -9 a worker while it uploads artifacts: nothing becomes half-visible, and a redelivery ends consistent."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

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

pytestmark = pytest.mark.integration

FILES = 40
FILE_SIZE = 2 << 20  # enough bytes that storing takes a while on loopback S3


def test_kill_during_storing_then_redelivery(worker_factory: Callable[..., Any], settings: Settings) -> None:
    env = {"STRONGROOM_AGENTS": agents_env(bulk=["files", str(FILES), str(FILE_SIZE)])}
    services = client_services(settings)
    app = producer(settings)
    secret, public = keywrap.generate_encryption_keypair()
    record = create_operation(services, public, "bulk")

    doomed = worker_factory(**env)
    task_id = send_run(app, record.id)
    deadline = time.monotonic() + 60
    while not any(key.endswith("/file-000.txt.enc") for key in stored_keys(services, record.id)):
        assert time.monotonic() < deadline, "the worker never started uploading"
        time.sleep(0.02)
    doomed.kill()  # SIGKILL to the worker's process group, mid-upload

    crashed = services.records.get(record.id)
    assert crashed.status == "running", "the run finished before the kill: make the agent's output bigger"
    assert crashed.artifacts == []  # uploaded objects exist, but no record names them: not visible
    assert 0 < len(stored_keys(services, record.id)) < FILES

    worker_factory(**env)
    # Redis redelivers an unacked message (same task id) after the visibility timeout; send it now instead.
    send_run(app, record.id, task_id=task_id)
    final = wait_status(services, record.id, {"succeeded", "failed", "cancelled"}, timeout=120)

    assert final.status == "succeeded", final.result
    assert len(final.artifacts) == FILES
    assert stored_keys(services, record.id) == sorted(a.object_key(record.id) for a in final.artifacts)
    assert decrypt_artifact(services, final, "file-039.txt", secret) == b"x" * FILE_SIZE

    from worker_service.pipeline.retention import sweep_orphans

    sweep_orphans(services)
    assert stored_keys(services, record.id) == sorted(a.object_key(record.id) for a in final.artifacts)
