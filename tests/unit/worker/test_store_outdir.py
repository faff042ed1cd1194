"""Reading an agent's out/ as a (root) worker: only the out/ the worker created, never what a link there names.

Review 2, finding 1: an agent owning its run directory replaced ``out/`` with a symlink to a root-only directory
and the root worker published the keyring file it found there. The run directory now stays the worker's, and
every read goes through a no-follow descriptor of the out/ ``fresh_workdir`` created.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

from shared import layout
from shared.crypto import keywrap
from shared.crypto.keyring import Keyring
from shared.models import OperationRecord, utcnow
from shared.records import OperationStore
from shared.settings import Settings
from shared.storage.memory import MemoryObjectStore
from tests.agents.harness import AGENT, agent_mounts, agent_python
from worker_service.agents import outputs
from worker_service.agents.outputs import LimitExceeded, collect_outputs
from worker_service.agents.runner import Limits
from worker_service.agents.workdir import Workdir, fresh_workdir
from worker_service.pipeline import run as pipeline
from worker_service.pipeline import store as store_module
from worker_service.services import Services

LIMITS = Limits(max_execution_time=20, max_disk_usage=50 << 20, max_artifact_count=5, max_artifact_size=1 << 20)
SECRET = b"TOP-SECRET-KEYRING-MATERIAL"
ROOT = os.geteuid() == 0
TEST_DB = 9  # a database of the session Redis no other suite uses


@pytest.fixture
def secret_dir(tmp_path: Path) -> Path:
    """A directory only the worker may read, holding a 0600 secret (like /etc/strongroom)."""
    secret = tmp_path / "secret"
    secret.mkdir(mode=0o700)
    (secret / "keyring.json").write_bytes(SECRET)
    (secret / "keyring.json").chmod(0o600)
    return secret


@pytest.fixture
def workdir() -> Iterator[Workdir]:
    with fresh_workdir(Path(tempfile.gettempdir())) as wd:
        yield wd


def _services(store: MemoryObjectStore, client: redis.Redis | None = None, **settings: Any) -> Services:
    keyring = Keyring.from_json(Keyring.generate_json("k1"))
    config = Settings.from_env({"REDIS_URL": "redis://127.0.0.1:1/0"}, **settings)
    connection = client or redis.Redis.from_url(config.redis_url)  # never contacted without a client
    return Services(config, connection, store, keyring, OperationStore(store, keyring, client))


def _record(public_key: str, agent: str = "privacy-audit", status: str = "running") -> OperationRecord:
    now = utcnow()
    return OperationRecord(
        id=layout.new_operation_id(agent),
        agent=agent,
        grantee="0x" + "ab" * 20,
        encryption_public_key=public_key,
        status=status,  # type: ignore[arg-type]
        created_at=now,
        expires_at=now + timedelta(days=7),
    )


# --- the checks themselves ------------------------------------------------------------------------------------------


@pytest.mark.unit
def test_out_replaced_by_a_symlink_is_refused_not_followed(workdir: Workdir, secret_dir: Path) -> None:
    workdir.out_dir.rmdir()
    workdir.out_dir.symlink_to(secret_dir)
    with pytest.raises(LimitExceeded, match="out/ was replaced") as refused:
        collect_outputs(workdir.out_dir, LIMITS)
    assert refused.value.code == "out_dir_replaced"
    store = MemoryObjectStore()
    with pytest.raises(LimitExceeded, match="out/ was replaced"):
        store_module.store_artifacts(
            _services(store),
            _record(keywrap.generate_encryption_keypair()[1]),
            workdir.out_dir,
            run_id="0123456789abcdef",
            ensure_owner=lambda: None,
        )
    assert list(store.list("")) == []


@pytest.mark.unit
def test_out_replaced_by_another_real_directory_is_refused(workdir: Workdir) -> None:
    """No link at all: a different directory under the same name fails the device/inode check."""
    workdir.out_dir.rename(workdir.tmp_dir / "original-out")
    workdir.out_dir.mkdir()
    (workdir.out_dir / "report.txt").write_text("planted")
    with pytest.raises(LimitExceeded, match="out/ was replaced"):
        collect_outputs(workdir.out_dir, LIMITS)


@pytest.mark.unit
def test_out_swapped_after_collection_uploads_nothing(
    workdir: Workdir, secret_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Listed while genuine, swapped for a link to the secret directory before the first open."""
    (workdir.out_dir / "keyring.json").write_bytes(b"harmless agent output")
    real = store_module.collect_outputs

    def collect_then_swap(out_dir: Path, limits: Limits) -> list[outputs.OutputFile]:
        found = real(out_dir, limits)
        out_dir.rename(workdir.tmp_dir / "was-out")
        out_dir.symlink_to(secret_dir)
        return found

    monkeypatch.setattr(store_module, "collect_outputs", collect_then_swap)
    store = MemoryObjectStore()
    with pytest.raises(LimitExceeded, match="out/ was replaced"):
        store_module.store_artifacts(
            _services(store),
            _record(keywrap.generate_encryption_keypair()[1]),
            workdir.out_dir,
            run_id="0123456789abcdef",
            ensure_owner=lambda: None,
        )
    assert list(store.list("")) == []


@pytest.mark.unit
def test_a_file_replaced_by_another_of_the_same_size_is_refused(workdir: Workdir) -> None:
    (workdir.out_dir / "a.txt").write_text("12345")
    (item,) = collect_outputs(workdir.out_dir, LIMITS)
    (workdir.out_dir / "b.txt").write_text("abcde")  # created while a.txt exists: another inode
    (workdir.out_dir / "b.txt").replace(workdir.out_dir / "a.txt")  # same name and size
    with pytest.raises(LimitExceeded, match="changed after the agent finished"):
        outputs.open_output_fd(item)


# --- the whole run: an agent as nobody tries it (the reviewer's reproduction) ---------------------------------------


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(f"{redis_url.rsplit('/', 1)[0]}/{TEST_DB}")
    connection.flushdb()
    yield connection
    connection.flushdb()
    connection.close()


def _swapping_run(client: redis.Redis, tmp_path: Path, secret_dir: Path, **settings: Any) -> tuple[Any, Services]:
    agents = {"swapper": {"command": [agent_python(), AGENT, "swapout", str(secret_dir)], "mounts": agent_mounts()}}
    store = MemoryObjectStore()
    services = _services(store, client, agents=json.dumps(agents), work_dir=tmp_path / "work", **settings)
    record = _record(keywrap.generate_encryption_keypair()[1], agent="swapper", status="pending")
    services.records.create(record, {"text": "x"})
    return pipeline.run_operation(services, record.id, token="task-1"), services


@pytest.mark.integration
def test_a_sandboxed_agent_cannot_replace_out(client: redis.Redis, tmp_path: Path, secret_dir: Path) -> None:
    """In the sandbox out/ is a mount point in a read-only directory: it cannot be removed or replaced."""
    final, services = _swapping_run(client, tmp_path, secret_dir)
    assert final is not None and final.status == "failed", final
    assert final.artifacts == []
    assert final.result is not None
    assert final.result.summary.startswith("agent failed (exit status 1): could not replace out/:")
    assert list(services.store.list(layout.artifacts_prefix(final.id))) == []
    assert list(services.store.list(layout.embedded_prefix(final.id))) == []


@pytest.mark.integration
def test_a_replaced_out_dir_fails_the_run_even_unsandboxed(
    client: redis.Redis, tmp_path: Path, secret_dir: Path
) -> None:
    """Unsandboxed (development) the agent may swap out/; the worker still reads nothing through the link."""
    final, services = _swapping_run(client, tmp_path, secret_dir, env="development", agent_sandbox="none")
    assert final is not None and final.status == "failed", final
    assert final.artifacts == []
    assert final.result is not None
    assert final.result.summary == "invalid output directory: out/ was replaced after the worker created it; " \
        "nothing is stored"  # fmt: skip
    assert list(services.store.list(layout.artifacts_prefix(final.id))) == []
