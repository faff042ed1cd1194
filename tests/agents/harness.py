"""Drive a real worker the way the API does: write the record with OperationStore.create, send RunOperation by name.

Used by the worker integration tests (importable as ``tests.agents.harness``).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import redis
from celery import Celery

from shared import layout
from shared.contracts import RunOperation, celery_config
from shared.crypto import cobblestone, keywrap
from shared.crypto.keyring import Keyring
from shared.models import OperationRecord, utcnow
from shared.records import OperationStore
from shared.settings import Settings
from shared.storage.s3 import S3ObjectStore
from worker_service.services import Services

AGENT = str(Path(__file__).resolve().parent / "misbehave.py")
HOST = str(Path(__file__).resolve().parent / "host.py")


def agent_python() -> str:
    """An interpreter for misbehave.py (standard library only): the system one, which the sandbox's ``/usr``
    shows, else the base interpreter of this one (``agent_mounts`` then mounts it)."""
    if os.access("/usr/bin/python3", os.X_OK):
        return "/usr/bin/python3"
    return os.path.realpath(getattr(sys, "_base_executable", sys.executable))


def agent_mounts() -> list[str]:
    """What a misbehave.py agent needs besides ``/usr`` in its sandbox: the script (and a non-system Python)."""
    return [AGENT] if agent_python() == "/usr/bin/python3" else [AGENT, sys.base_prefix]


def agents_env(**commands: list[str]) -> str:
    """STRONGROOM_AGENTS for misbehave.py modes, e.g. ``agents_env(many=["files", "60"])``."""
    return json.dumps(
        {name: {"command": [agent_python(), AGENT, *argv], "mounts": agent_mounts()} for name, argv in commands.items()}
    )


def client_services(settings: Settings) -> Services:
    """What the test itself uses to create and inspect operations (the same S3 bucket and Redis as the worker)."""
    keyring = Keyring.from_json(settings.keyring_json() or "")
    store = S3ObjectStore.from_settings(settings)
    connection = redis.Redis.from_url(settings.redis_url)
    return Services(settings, connection, store, keyring, OperationStore(store, keyring, connection))


def producer(settings: Settings) -> Celery:
    app = Celery("strongroom-test-producer")
    app.config_from_object(celery_config(settings))
    return app


def create_operation(services: Services, public_key: str, agent: str, **agent_input: Any) -> OperationRecord:
    now = utcnow()
    record = OperationRecord(
        id=layout.new_operation_id(agent),
        agent=agent,
        grantee="0x" + "ef" * 20,
        encryption_public_key=public_key,
        created_at=now,
        expires_at=now + timedelta(days=1),
    )
    services.records.create(record, agent_input)
    return record


def send_run(app: Celery, operation_id: str, task_id: str | None = None) -> str:
    message = RunOperation(operation_id=operation_id)
    result = app.send_task(RunOperation.TASK, kwargs=message.model_dump(), task_id=task_id)
    return str(result.id)


def wait_status(services: Services, operation_id: str, statuses: set[str], timeout: float = 60) -> OperationRecord:
    deadline = time.monotonic() + timeout
    while True:
        record = services.records.get(operation_id)
        if record.status in statuses:
            return record
        if time.monotonic() > deadline:
            raise AssertionError(f"operation stayed {record.status!r}, wanted one of {sorted(statuses)}")
        time.sleep(0.1)


def stored_keys(services: Services, operation_id: str) -> list[str]:
    prefixes = (layout.artifacts_prefix(operation_id), layout.embedded_prefix(operation_id))
    return sorted(info.key for prefix in prefixes for info in services.store.list(prefix))


def decrypt_artifact(services: Services, record: OperationRecord, name: str, secret: bytes) -> bytes:
    """What a client does: fetch the object, unwrap the data key with its secret, decrypt and check the SHA-256."""
    artifact = record.artifact(name)
    assert artifact is not None, name
    key = keywrap.unwrap_data_key(secret, artifact.encryption.wrapped_key.model_dump(), record.id, name)
    chunks = services.store.open_range(artifact.object_key(record.id))
    plaintext = b"".join(
        cobblestone.decrypt_stream(key.data_key, cobblestone.artifact_context(record.id, name), chunks)
    )
    key.check_plaintext_sha256(hashlib.sha256(plaintext).hexdigest())
    return plaintext
