"""Session fixtures: real Valkey, real SeaweedFS S3, real `strongroom worker|beat|api` subprocesses.

Everything is lazy: a unit test that asks for none of these starts nothing. Servers bind to 127.0.0.1 on free
ports; their logs go to files under the session's temp dir and are attached to the report of any failing test.
Set STRONGROOM_TEST_REDIS_URL, or STRONGROOM_TEST_S3_ENDPOINT_URL (with AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/
AWS_REGION), to run against servers you already have instead.
"""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `tests.helpers` importable however pytest was launched
    sys.path.insert(0, str(ROOT))

from shared.crypto.keyring import Keyring  # noqa: E402
from shared.settings import Settings  # noqa: E402
from strongroom.dev.servers import S3Credentials, SeaweedServer, ValkeyServer  # noqa: E402
from tests.helpers import repo_guard, services  # noqa: E402
from tests.helpers.ports import free_port  # noqa: E402

__all__ = ["free_port"]

repo_guard.install(ROOT)  # a test that reads a folder beside the checkout (a user's clone has none) fails


# --- servers ---------------------------------------------------------------------------------------------------


@dataclass
class ExternalRedis:
    """A Redis we did not start (STRONGROOM_TEST_REDIS_URL): it cannot be restarted by a test."""

    url: str

    @property
    def port(self) -> int:
        from urllib.parse import urlparse

        return urlparse(self.url).port or 6379

    def stop(self) -> None:
        pytest.skip("needs the embedded Redis (STRONGROOM_TEST_REDIS_URL is set)")

    def start(self) -> None:
        pytest.skip("needs the embedded Redis (STRONGROOM_TEST_REDIS_URL is set)")


@dataclass(frozen=True)
class ExternalS3:
    endpoint_url: str
    access_key: str
    secret_key: str
    region: str


@pytest.fixture(scope="session")
def stack_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Data and logs of every server and subprocess of this session."""
    return tmp_path_factory.mktemp("stack")


@pytest.fixture(scope="session")
def redis_server(stack_dir: Path) -> Iterator[ValkeyServer | ExternalRedis]:
    external = os.environ.get("STRONGROOM_TEST_REDIS_URL")
    if external:
        yield ExternalRedis(external)
        return
    server = ValkeyServer(stack_dir / "valkey", log_path=stack_dir / "logs" / "valkey.log")
    _LOGS["valkey"] = server.log_path
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_url(redis_server: ValkeyServer | ExternalRedis) -> str:
    return redis_server.url


@pytest.fixture(scope="session")
def s3_server(stack_dir: Path, page_origin: str) -> Iterator[SeaweedServer | ExternalS3]:
    endpoint = os.environ.get("STRONGROOM_TEST_S3_ENDPOINT_URL")
    if endpoint:
        yield ExternalS3(
            endpoint,
            os.environ["AWS_ACCESS_KEY_ID"],
            os.environ["AWS_SECRET_ACCESS_KEY"],
            os.environ.get("AWS_REGION", "us-east-1"),
        )
        return
    server = SeaweedServer(
        stack_dir / "seaweedfs",
        S3Credentials.generate(),
        # A bucket without CORS rules falls back to weed's -s3.allowedOrigins: keep it narrow, never `*`.
        cors_origins=(page_origin,),
        log_path=stack_dir / "logs" / "seaweedfs.log",
    )
    _LOGS["seaweedfs"] = server.log_path
    server.start()
    try:
        yield server
    finally:
        server.stop()


_LOGS: dict[str, Path] = {}


@pytest.fixture
def redis_connection(redis_url: str) -> Iterator[redis.Redis]:
    """A plain client of the session's Redis for one test, closed after it."""
    connection = redis.Redis.from_url(redis_url)
    try:
        yield connection
    finally:
        connection.close()


@pytest.fixture(scope="session")
def page_origin() -> str:
    """An http://127.0.0.1:<port> origin the bucket's CORS rule allows; serve browser test pages from its port."""
    return f"http://127.0.0.1:{free_port()}"


@pytest.fixture(scope="session")
def stack_env(
    redis_url: str, s3_server: SeaweedServer | ExternalS3, page_origin: str, stack_dir: Path
) -> dict[str, str]:
    """Environment for strongroom processes pointing at the session's servers; the bucket is initialised once."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", str(stack_dir)),
        "REDIS_URL": redis_url,
        "STRONGROOM_S3_ENDPOINT_URL": s3_server.endpoint_url,
        "AWS_ACCESS_KEY_ID": s3_server.access_key,
        "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
        "AWS_REGION": s3_server.region,
        "STRONGROOM_S3_BUCKET": f"sr-test-{secrets.token_hex(6)}",
        "STRONGROOM_KEYRING": Keyring.generate_json(),
        "STRONGROOM_ENV": "development",
        "STRONGROOM_LOG_FORMAT": "json",
        "STRONGROOM_LOG_LEVEL": "INFO",
        "STRONGROOM_S3_CORS_ORIGINS": page_origin,
        "STRONGROOM_WORK_DIR": str(stack_dir / "work"),
        "PYTHONUNBUFFERED": "1",
    }
    (stack_dir / "work").mkdir(exist_ok=True)
    _init_bucket(Settings.from_env(env))
    return env


def _init_bucket(settings: Settings) -> None:
    """Create the session bucket the way `strongroom init` does, via the ObjectStore."""
    from shared.storage.s3 import S3ObjectStore

    store = S3ObjectStore.from_settings(settings)
    store.ensure_bucket(cors_origins=settings.s3_cors_origins, expire_after_days=settings.lifecycle_days)


@pytest.fixture(scope="session")
def settings(stack_env: dict[str, str]) -> Settings:
    return Settings.from_env(stack_env)


@pytest.fixture(scope="session")
def object_store(settings: Settings) -> Any:
    from shared.storage.s3 import S3ObjectStore

    return S3ObjectStore.from_settings(settings)


# --- strongroom processes --------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def _services_cleanup() -> Iterator[None]:
    """Stop every api/worker/beat subprocess at session end, even after failures (process groups)."""
    try:
        yield
    finally:
        services.stop_all()


@pytest.fixture(scope="session")
def worker_factory(
    stack_env: dict[str, str], stack_dir: Path, _services_cleanup: None
) -> Callable[..., services.WorkerHandle]:
    """Start `strongroom worker` with stack_env + overrides; returns once it answers a Celery ping.

    ``pool`` and ``concurrency`` keyword arguments choose the pool (default threads, 2); every other keyword is
    an environment variable. A worker started with overrides takes the queue for itself: the workers already
    running stop consuming until it is stopped.
    """

    running: list[services.WorkerHandle] = []

    def start(*, pool: str = "threads", concurrency: int = 2, **env: str) -> services.WorkerHandle:
        handle = services.WorkerHandle({**stack_env, **env}, stack_dir / "logs", pool=pool, concurrency=concurrency)
        if env:  # a specially configured worker must be the only consumer of the queue while it runs
            handle.paused = [other for other in running if other.running()]
            for other in handle.paused:
                other.set_consuming(False)
        handle.start()
        running.append(handle)
        return handle.wait_ready()

    return start


@pytest.fixture(scope="session")
def celery_worker(worker_factory: Callable[..., services.WorkerHandle]) -> services.WorkerHandle:
    return worker_factory()


@pytest.fixture(scope="session")
def beat_factory(
    stack_env: dict[str, str], stack_dir: Path, _services_cleanup: None
) -> Callable[..., services.BeatHandle]:
    def start(**env: str) -> services.BeatHandle:
        handle = services.BeatHandle({**stack_env, **env}, stack_dir / "logs")
        handle.start()
        return handle.wait_ready()

    return start


@pytest.fixture(scope="session")
def api_factory(
    stack_env: dict[str, str], stack_dir: Path, _services_cleanup: None
) -> Callable[..., services.ApiHandle]:
    """Start `strongroom api` on a free port with stack_env + overrides; returns once GET /healthz is 200."""

    def start(**env: str) -> services.ApiHandle:
        handle = services.ApiHandle({**stack_env, **env}, stack_dir / "logs")
        handle.start()
        return handle.wait_ready()

    return start


@pytest.fixture(scope="session")
def api_server(api_factory: Callable[..., services.ApiHandle]) -> services.ApiHandle:
    return api_factory()


@pytest.fixture(scope="session")
def api_url(api_server: services.ApiHandle) -> str:
    return api_server.url


# --- logs of subprocesses on failure ---------------------------------------------------------------------------


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome: Any = yield
    report = outcome.get_result()
    if not report.failed:
        return
    for handle in services.STARTED:
        report.sections.append((f"{handle.name} log (tail)", handle.logs()[-6000:]))
    for name, path in _LOGS.items():
        if path.exists():
            report.sections.append((f"{name} log (tail)", path.read_text(errors="replace")[-3000:]))
