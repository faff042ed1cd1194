"""Key rotation on real SeaweedFS: an interrupted run resumes to full rotation, after which the old key can be
removed (the CLI agrees); before rotation, removal is refused."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from s3_pipeline_support import env_for, now, private_services, record

from shared import audit_log, layout
from shared.crypto.keyring import Keyring
from shared.errors import KeyringError
from shared.events import new_event
from shared.records import OperationStore
from shared.settings import Settings
from worker_service.pipeline import rotation
from worker_service.services import Services

pytestmark = pytest.mark.integration

OLD = Keyring.from_json(Keyring.generate_json("rot-old"))
NEW = OLD.add_primary("rot-new")


@pytest.fixture
def old_services(settings: Settings) -> Iterator[Services]:
    yield from private_services(settings, OLD)


def _with_keyring(services: Services, keyring: Keyring) -> Services:
    return Services(
        services.settings,
        services.redis,
        services.store,
        keyring,
        OperationStore(services.store, keyring, services.redis),
    )


def _populate(services: Services, operations: int = 3) -> dict[str, bytes]:
    for _ in range(operations):
        op = record(created=now())
        services.records.create(op, {"text": "x"})
        services.store.put_bytes(layout.artifact_key(op.id, "a.txt", layout.new_run_id()), b"payload")
        for _ in range(2):
            audit_log.append_batch(services.records, op.id, [new_event(operation_id=op.id, action="auth", result="ok")])
    audit_log.append_batch(services.records, None, [new_event(action="auth", result="denied")])
    return {
        info.key: services.records.get_sealed(info.key)
        for info in services.store.list("")
        if rotation.is_sealed_key(info.key)
    }


def _cli(
    services: Services, stack_env: dict[str, str], keyring: Keyring, *args: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "strongroom.cli.admin", "keys", *args],
        env=env_for(services, stack_env, keyring),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_interrupted_rotation_resumes_and_then_the_old_key_can_be_removed(
    old_services: Services, stack_env: dict[str, str]
) -> None:
    plaintexts = _populate(old_services)
    services = _with_keyring(old_services, NEW)

    with pytest.raises(KeyringError, match="still protects"):
        rotation.check_removable(services, "rot-old")
    refused = _cli(services, stack_env, NEW, "check-remove", "rot-old")
    assert refused.returncode == 1 and "still protects" in refused.stderr

    first: dict[str, Any] = rotation.rotate_keys(services, batch_size=2, limit=5)  # stopped midway
    assert first["rotated"] == {"rot-old": 5} and not first["complete"]
    assert rotation.key_usage(services) == {"rot-new": 5, "rot-old": len(plaintexts) - 5}
    second = rotation.rotate_keys(services, batch_size=2)
    assert second["rotated"] == {"rot-old": len(plaintexts) - 5} and second["complete"]

    rotation.check_removable(services, "rot-old")
    trimmed = _with_keyring(old_services, NEW.without("rot-old"))
    assert {key: trimmed.records.get_sealed(key) for key in plaintexts} == plaintexts
    operations = {key.split("/")[1] for key in plaintexts if key.startswith(layout.OPERATIONS)}
    assert all(audit_log.verify_chain(trimmed.records, op).ok for op in [*operations, None])
    usage = _cli(trimmed, stack_env, NEW.without("rot-old"), "usage")
    assert usage.returncode == 0 and f'"rot-new": {len(plaintexts)}' in usage.stdout
    assert _cli(trimmed, stack_env, NEW.without("rot-old"), "check-remove", "rot-old").returncode == 0
