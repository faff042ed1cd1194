"""Two deliveries of one run task against a real worker: after a kill -9 mid-upload (nothing becomes half-visible,
the redelivery waits out the dead run's lease and ends consistent), and while the first delivery still uploads
(the copy is a no-op: one run, its lease never taken over)."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shared import layout
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
from worker_service.pipeline.lease import as_text
from worker_service.pipeline.retention import sweep_orphans

pytestmark = pytest.mark.integration

FILES = 40
FILE_SIZE = 2 << 20  # enough bytes that storing takes a while on loopback S3


def wait_first_upload(services: Any, operation_id: str) -> None:
    deadline = time.monotonic() + 60
    while not any(key.endswith("/file-000.txt.enc") for key in stored_keys(services, operation_id)):
        assert time.monotonic() < deadline, "the worker never started uploading"
        time.sleep(0.02)


def named(record: Any) -> list[str]:
    return sorted(key for artifact in record.artifacts for key in artifact.object_keys(record.id))


def test_kill_during_storing_then_redelivery(worker_factory: Callable[..., Any], settings: Settings) -> None:
    env = {"STRONGROOM_AGENTS": agents_env(bulk=["files", str(FILES), str(FILE_SIZE)])}
    services = client_services(settings)
    app = producer(settings)
    secret, public = keywrap.generate_encryption_keypair()
    record = create_operation(services, public, "bulk")

    doomed = worker_factory(**env)
    task_id = send_run(app, record.id)
    wait_first_upload(services, record.id)
    doomed.kill()  # SIGKILL to the worker's process group, mid-upload

    crashed = services.records.get(record.id)
    assert crashed.status == "running", "the run finished before the kill: make the agent's output bigger"
    assert crashed.artifacts == []  # uploaded objects exist, but no record names them: not visible
    assert 0 < len(stored_keys(services, record.id)) < FILES

    leftovers = stored_keys(services, record.id)

    worker_factory(**env)
    # Redis redelivers an unacked message (same task id) after the visibility timeout; send it now instead, while
    # the dead run's lease is still there: the copy must wait it out, not give the operation up.
    send_run(app, record.id, task_id=task_id)
    final = wait_status(services, record.id, {"succeeded", "failed", "cancelled"}, timeout=120)

    assert final.status == "succeeded", final.result
    assert len(final.artifacts) == FILES
    # The dead run's uploads are unnamed leftovers until the (age-gated) orphan sweep; nothing else is stored.
    # Its uploads run several at a time, so a PUT whose body was sent before the kill may still have landed after
    # the snapshot above: the leftovers are whatever lies under the dead run's own key prefix.
    dead_run = leftovers[0].split("/artifacts/", 1)[1].split("/", 1)[0]
    dead = [key for key in stored_keys(services, record.id) if f"/artifacts/{dead_run}/" in key]
    assert set(leftovers) <= set(dead) and all(final_key not in dead for final_key in named(final))
    assert stored_keys(services, record.id) == sorted([*named(final), *dead])
    assert decrypt_artifact(services, final, "file-039.txt", secret) == b"x" * FILE_SIZE

    sweep_orphans(services)  # too young: kept
    assert stored_keys(services, record.id) == sorted([*named(final), *dead])
    sweep_orphans(services, now=datetime.now(UTC) + timedelta(hours=2))
    assert stored_keys(services, record.id) == named(final)
    assert decrypt_artifact(services, final, "file-000.txt", secret) == b"x" * FILE_SIZE


def test_a_second_delivery_during_the_uploads_is_a_no_op(
    worker_factory: Callable[..., Any], settings: Settings
) -> None:
    """The broker hands a task out again while it still runs (uploads past the visibility timeout): the copy,
    same task id, runs on the worker's second thread and must leave the live run alone."""
    env = {"STRONGROOM_AGENTS": agents_env(bulk=["files", str(FILES), str(FILE_SIZE)])}
    services = client_services(settings)
    app = producer(settings)
    secret, public = keywrap.generate_encryption_keypair()
    record = create_operation(services, public, "bulk")

    worker_factory(**env)  # threads pool, concurrency 2: room for the copy beside the first delivery
    task_id = send_run(app, record.id)
    wait_first_upload(services, record.id)
    holder = services.redis.get(layout.redis_run_lease(record.id))
    assert holder is not None
    send_run(app, record.id, task_id=task_id)
    final = wait_status(services, record.id, {"succeeded", "failed", "cancelled"}, timeout=120)

    assert final.status == "succeeded", final.result
    assert len(final.artifacts) == FILES
    first_run = as_text(holder).rsplit("/", 1)[1]
    assert {artifact.run_id for artifact in final.artifacts} == {first_run}  # the first delivery's run, not a copy's
    assert stored_keys(services, record.id) == named(final)  # no second run uploaded anything
    assert decrypt_artifact(services, final, "file-039.txt", secret) == b"x" * FILE_SIZE
