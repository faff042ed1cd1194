"""The fault suite's stack: `strongroom api` + `worker` (+ `beat` when asked) talking to Valkey and S3 through
fault proxies, and the end-state checks every scenario ends with.

The stack has its own Valkey (a scenario may kill it) and its own bucket on the session's SeaweedFS; the API and
the worker reach both only through ``FaultProxy`` instances (``redis_proxy``, ``s3_proxy``), so a scenario can cut,
refuse or truncate their traffic. The test itself reads Valkey and S3 directly (``services``), so a fault never
hides what really is stored.

Adding a scenario: take the ``fault_stack`` fixture, make an operation with ``create`` (agents are
``tests/agents/misbehave.py`` modes, see ``AGENTS``), break something, ``wait_finished``, then
``assert_clean(operation_id)``. ``start_worker(**env)`` restarts the worker with other settings (it is the only
consumer of the stack's queue).
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import redis

from shared.crypto.keyring import Keyring
from shared.errors import StrongroomError
from shared.models import TERMINAL_STATUSES, GetOperationResponse
from shared.records import OperationStore
from shared.settings import Settings
from shared.storage.s3 import S3ObjectStore
from strongroom.client import StrongroomClient
from strongroom.client.identity import Identity, generate_identity
from strongroom.dev.servers import ValkeyServer
from tests.agents.harness import AGENT, agents_env, stored_keys
from tests.helpers.faultproxy import FaultProxy
from tests.helpers.services import ApiHandle, BeatHandle, WorkerHandle
from worker_service.pipeline.retention import sweep_orphans
from worker_service.services import Services

# misbehave.py modes every process of the stack knows (the API refuses agents it does not know).
AGENTS = {
    "files": ["files", "3", "1000"],
    "bulk": ["files", "8", str(3 << 20)],  # 24 MiB of output: storing takes a while, one file goes multipart
    "big": ["big", str(24 << 20)],  # one 24 MiB file: a multipart upload
    "sealed8": ["big", str(8 << 20)],  # one 8 MiB file
    "until": ["until", "{prompt}"],  # sleeps until the unix time given as the prompt, then writes one file
}
RUN_DIR_PREFIX = "strongroom-agent-"


def agents_json() -> str:
    return agents_env(**AGENTS)  # with the mounts the sandbox needs for misbehave.py


@dataclass
class FaultStack:
    """See the module docstring. ``services`` talks to the real servers, never through a proxy."""

    env: dict[str, str]
    log_dir: Path
    work_dir: Path
    valkey: ValkeyServer
    redis_proxy: FaultProxy
    s3_proxy: FaultProxy
    services: Services
    identity: Identity = field(default_factory=generate_identity)
    api: ApiHandle | None = None
    worker: WorkerHandle | None = None
    beats: list[BeatHandle] = field(default_factory=list)

    # --- processes ----------------------------------------------------------------------------------------------

    def start_api(self) -> ApiHandle:
        self.api = ApiHandle(self.env, self.log_dir)
        self.api.start()
        return self.api.wait_ready()

    def start_worker(self, **env: str) -> WorkerHandle:
        """(Re)start the stack's one worker, with ``env`` on top of the stack's environment."""
        self.stop_worker()
        self.worker = WorkerHandle({**self.env, **env}, self.log_dir)
        self.worker.start()
        return self.worker.wait_ready(timeout=90)

    def stop_worker(self) -> None:
        if self.worker is not None:
            self.worker.stop()
            self.worker = None

    def start_beat(self, **env: str) -> BeatHandle:
        beat = BeatHandle({**self.env, **env}, self.log_dir)
        beat.start()
        self.beats.append(beat.wait_ready())
        return beat

    def stop_beats(self) -> None:
        while self.beats:
            self.beats.pop().stop()

    def close(self) -> None:
        self.stop_beats()
        self.stop_worker()
        if self.api is not None:
            self.api.stop()
        self.redis_proxy.close()
        self.s3_proxy.close()
        self.valkey.stop()

    # --- operations through the API -----------------------------------------------------------------------------

    def client(self) -> StrongroomClient:
        assert self.api is not None
        return StrongroomClient(self.api.url, self.identity, timeout=15.0)

    def create(self, agent: str, agent_input: dict[str, Any] | None = None) -> str:
        with self.client() as client:
            return client.create(agent, agent_input or {}, retention_days=1).id

    def get(self, operation_id: str) -> GetOperationResponse:
        with self.client() as client:
            return client.get(operation_id)

    def wait_status(self, operation_id: str, statuses: set[str], timeout: float = 120) -> GetOperationResponse:
        """Poll the API until the operation has one of ``statuses``; API errors (Redis down...) are retried."""
        deadline = time.monotonic() + timeout
        last: str = "no answer"
        while time.monotonic() < deadline:
            try:
                operation = self.get(operation_id)
            except StrongroomError as exc:
                last = f"API error {exc.code}"
            else:
                if operation.status in statuses:
                    return operation
                last = operation.status
            time.sleep(0.25)
        raise AssertionError(f"{operation_id} stayed {last} for {timeout:g}s, wanted one of {sorted(statuses)}")

    def wait_finished(self, operation_id: str, timeout: float = 120) -> GetOperationResponse:
        return self.wait_status(operation_id, set(TERMINAL_STATUSES), timeout)

    # --- end-state checks ---------------------------------------------------------------------------------------

    def assert_clean(self, operation_id: str) -> None:
        """What every scenario must leave: the operation ended, the API and S3 agree on what it names, nothing
        half-visible, no orphan object or multipart upload after the sweep, no run directory (plaintext) left on
        the worker's disk, and no agent process left."""
        record = self.services.records.get(operation_id)
        assert record.finished, f"{operation_id} is {record.status}"
        served = self.get(operation_id)
        assert served.status == record.status
        named = sorted(key for artifact in record.artifacts for key in artifact.object_keys(operation_id))
        assert sorted(a.name for a in served.artifacts.artifacts) == sorted(a.name for a in record.artifacts)
        if record.status != "succeeded":
            assert record.artifacts == [], "a failed operation names artifacts"
        for key in named:
            assert self.services.store.exists(key), f"the record names a missing object {key}"
        sweep_orphans(self.services, now=datetime.now(UTC) + timedelta(hours=7))  # past every age gate
        assert stored_keys(self.services, operation_id) == named, "unnamed objects survived the orphan sweep"
        assert self.multipart_uploads(operation_id) == [], "incomplete multipart uploads survived the sweep"
        assert self.run_dirs() == [], "a run directory (agent plaintext) was left on the worker's disk"
        assert self.agent_processes() == [], "an agent process was left behind"

    def multipart_uploads(self, operation_id: str) -> list[str]:
        store = self.services.store
        assert isinstance(store, S3ObjectStore)
        answer = store.client.list_multipart_uploads(Bucket=store.bucket, Prefix=f"operations/{operation_id}/")
        return [upload["Key"] for upload in answer.get("Uploads", [])]

    def run_dirs(self) -> list[str]:
        return sorted(p.name for p in self.work_dir.glob(f"{RUN_DIR_PREFIX}*"))

    def agent_processes(self) -> list[int]:
        """Live processes running the test agent (``misbehave.py``) on behalf of this stack's worker."""
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
                status = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if status != "Z" and AGENT.encode() in argv and self._ours(entry):
                found.append(int(entry.name))
        return found

    def _ours(self, proc: Path) -> bool:
        try:
            return str(self.work_dir) in os.readlink(proc / "cwd")
        except OSError:
            return True  # cannot tell: count it

    def wait_for(self, check: Any, what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            assert time.monotonic() < deadline, f"never happened: {what}"
            time.sleep(0.1)


def build(stack_env: dict[str, str], stack_dir: Path, s3_port: int) -> Iterator[FaultStack]:
    """A fault stack on the session's SeaweedFS (own bucket) and its own Valkey; closed after the session."""
    root = stack_dir / f"faults-{secrets.token_hex(3)}"
    log_dir, work_dir = root / "logs", root / "work"
    work_dir.mkdir(parents=True)
    valkey = ValkeyServer(root / "valkey", log_path=log_dir / "valkey.log")
    valkey.start()
    redis_proxy = FaultProxy(valkey.port, name="valkey")
    s3_proxy = FaultProxy(s3_port, name="s3")
    env = {
        **stack_env,
        "REDIS_URL": f"redis://{redis_proxy.address}/0",
        "STRONGROOM_S3_ENDPOINT_URL": f"http://{s3_proxy.address}",
        "STRONGROOM_S3_BUCKET": f"sr-faults-{secrets.token_hex(5)}",
        "STRONGROOM_WORK_DIR": str(work_dir),
        "STRONGROOM_AGENTS": agents_json(),
    }
    settings = Settings.from_env(env)
    direct = replace(settings, redis_url=valkey.url, s3_endpoint_url=stack_env["STRONGROOM_S3_ENDPOINT_URL"])
    store = S3ObjectStore.from_settings(direct)
    store.ensure_bucket(cors_origins=direct.s3_cors_origins, expire_after_days=direct.lifecycle_days)
    keyring = Keyring.from_json(direct.keyring_json() or "")
    client = redis.Redis.from_url(direct.redis_url)
    services = Services(direct, client, store, keyring, OperationStore(store, keyring, client))
    stack = FaultStack(env, log_dir, work_dir, valkey, redis_proxy, s3_proxy, services)
    try:
        stack.start_api()
        stack.start_worker()
        yield stack
    finally:
        stack.close()
