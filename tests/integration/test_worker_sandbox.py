"""Hostile agents through the real Celery worker: the keyring file, the worker's environment and the worker itself
are out of reach, and a ``kill -9`` of the worker leaves no plaintext behind for longer than the next start."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from shared.crypto import keywrap
from shared.crypto.keyring import Keyring
from shared.settings import Settings
from tests.agents.harness import (
    agents_env,
    client_services,
    create_operation,
    decrypt_artifact,
    producer,
    send_run,
    wait_status,
)

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("pool", ["threads", "prefork"])
def test_a_hostile_agent_reads_nothing_and_cannot_kill_the_worker(
    worker_factory: Callable[..., Any], settings: Settings, tmp_path: Path, pool: str
) -> None:
    keyring_json = Keyring.generate_json()
    keyring_file = tmp_path / "keyring.json"
    keyring_file.write_text(keyring_json)
    keyring_file.chmod(0o600)
    env = {
        "STRONGROOM_KEYRING": "",
        "STRONGROOM_KEYRING_FILE": str(keyring_file),
        "STRONGROOM_AGENTS": agents_env(
            pry=["pry", str(keyring_file), "/proc/self/environ"],
            killer=["signal", "1"],
        ),
    }
    worker = worker_factory(pool=pool, concurrency=2, **env)
    try:
        services = client_services(Settings.from_env({**worker.env}))
        app = producer(settings)
        secret, public = keywrap.generate_encryption_keypair()
        pry = create_operation(services, public, "pry")
        send_run(app, pry.id)
        done = wait_status(services, pry.id, {"succeeded", "failed", "cancelled"})
        assert done.status == "succeeded", done.result
        report = decrypt_artifact(services, done, "pry.json", secret).decode()
        pried = json.loads(report)
        assert pried["read"][str(keyring_file)] == "FileNotFoundError"
        assert len(pried["siblings"]) == 1  # its own run directory: no other run's is there
        assert pried["pids"] == [1, 2]  # not the worker, not another run
        for value in (keyring_json, worker.env["AWS_SECRET_ACCESS_KEY"], settings.redis_url):
            assert value and value not in report
        killer = create_operation(services, public, "killer")  # pid 1 in its namespace is its own init
        send_run(app, killer.id)
        wait_status(services, killer.id, {"succeeded", "failed", "cancelled"})
        assert worker.running() and worker.ping()
    finally:
        worker.stop()


def test_kill_9_leaves_plaintext_only_until_the_next_worker_start(
    worker_factory: Callable[..., Any], settings: Settings
) -> None:
    """Issue 10 item 4: the run directory of a worker killed mid-run is removed when a worker starts again."""
    env = {"STRONGROOM_AGENTS": agents_env(sleeper=["slow", "60"])}
    services = client_services(settings)
    _, public = keywrap.generate_encryption_keypair()
    record = create_operation(services, public, "sleeper", text="PLAINTEXT-INPUT")
    before = set(_run_dirs(settings))
    doomed = worker_factory(**env)
    send_run(producer(settings), record.id)
    deadline = time.monotonic() + 60
    # The directory exists before its input.json is written: wait for the plaintext itself, then kill.
    while not (left := {path for path in set(_run_dirs(settings)) - before if _holds_plaintext(path)}):
        assert time.monotonic() < deadline, "the run never started"
        time.sleep(0.1)
    doomed.kill()  # SIGKILL: no cleanup runs
    assert all(_holds_plaintext(path) for path in left)

    again = worker_factory(**env)
    try:
        assert not any(path.exists() for path in left)  # removed at start, before the worker took a task
    finally:
        again.stop()


def _holds_plaintext(run_dir: Path) -> bool:
    try:
        return b"PLAINTEXT-INPUT" in (run_dir / "input.json").read_bytes()
    except OSError:
        return False


def _run_dirs(settings: Settings) -> list[Path]:
    assert settings.work_dir is not None
    return list(settings.work_dir.glob("strongroom-agent-*"))
