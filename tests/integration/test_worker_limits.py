"""Each agent limit, broken by a test agent on a real worker: the operation fails naming the limit, nothing stored."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from celery import Celery

from shared.crypto import keywrap
from shared.settings import Settings
from tests.agents.harness import (
    agents_env,
    client_services,
    create_operation,
    producer,
    send_run,
    stored_keys,
    wait_status,
)
from worker_service.services import Services

pytestmark = pytest.mark.integration

MAX_SIZE = 100_000
MAX_DISK = 8 << 20


@pytest.fixture(scope="module")
def worker(worker_factory: Callable[..., Any]) -> Any:
    handle = worker_factory(
        STRONGROOM_AGENTS=agents_env(
            many=["files", "6"],
            big=["big", str(MAX_SIZE + 1)],
            slow=["slow", "60"],
            hog=["disk", str(60 << 20)],
            nested=["subdir"],
        ),
        STRONGROOM_MAX_ARTIFACT_COUNT="5",
        STRONGROOM_MAX_ARTIFACT_SIZE=str(MAX_SIZE),
        STRONGROOM_MAX_EXECUTION_TIME="3",
        STRONGROOM_MAX_DISK_USAGE=str(MAX_DISK),
    )
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def services(settings: Settings) -> Services:
    return client_services(settings)


@pytest.fixture(scope="module")
def app(settings: Settings) -> Celery:
    return producer(settings)


@pytest.mark.parametrize(
    ("agent", "expected"),
    [
        ("many", "artifact limit exceeded: 6 files, max 5"),
        ("big", f"artifact size limit exceeded: 'big.bin' is {MAX_SIZE + 1} bytes, max {MAX_SIZE}"),
        ("slow", "time limit exceeded: ran longer than 3 s"),
        ("hog", "disk limit exceeded: working directory used "),
        ("nested", "invalid artifact: 'nested' is a directory; only regular files in out/ are stored"),
    ],
)
def test_limit_violation_fails_and_publishes_nothing(
    worker: Any, services: Services, app: Celery, agent: str, expected: str
) -> None:
    _, public = keywrap.generate_encryption_keypair()
    record = create_operation(services, public, agent)
    send_run(app, record.id)

    final = wait_status(services, record.id, {"succeeded", "failed", "cancelled"})

    assert final.status == "failed"
    assert final.result is not None and final.result.status == "error"
    assert final.result.summary.startswith(expected), final.result.summary
    if agent == "hog":
        assert final.result.summary.endswith(f"bytes, max {MAX_DISK}")
    assert final.artifacts == []
    assert stored_keys(services, record.id) == []
