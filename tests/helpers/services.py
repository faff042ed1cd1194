"""Handles for `strongroom api|worker|beat` subprocesses started by the fixtures.

Each runs in its own process group (so a SIGKILL reaches prefork children too) with its output in a log file;
every handle started in a session is registered so the session can stop it and a failing test can show its logs.
"""

from __future__ import annotations

import secrets
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import httpx

from shared.contracts import QUEUE
from strongroom.dev.servers import LOOPBACK, EmbeddedServerError, ManagedProcess, free_port, wait_for

STARTED: list[ServiceHandle] = []


class ServiceHandle:
    """One `strongroom <command>` subprocess: ``.pid``, ``.stop()`` (SIGTERM), ``.kill()`` (SIGKILL), ``.logs()``."""

    def __init__(self, name: str, args: list[str], env: Mapping[str, str], log_dir: Path) -> None:
        self.name = name
        self.env = dict(env)
        log_dir.mkdir(parents=True, exist_ok=True)
        self.process = ManagedProcess(
            [sys.executable, "-m", "strongroom", *args], log_path=log_dir / f"{name}.log", env=self.env, name=name
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def start(self) -> None:
        self.process.start()
        STARTED.append(self)

    def running(self) -> bool:
        return self.process.running()

    def stop(self, timeout: float = 10.0) -> int | None:
        return self.process.stop(timeout)

    def kill(self) -> None:
        self.process.kill()

    def logs(self) -> str:
        return self.process.logs()

    def _ready_failed(self, what: str, exc: Exception) -> EmbeddedServerError:
        tail = self.logs()[-4000:]
        self.kill()
        return EmbeddedServerError(f"{self.name}: {what}: {exc}\n--- {self.name} log tail ---\n{tail}")


class WorkerHandle(ServiceHandle):
    """A Celery worker; ``.hostname`` is its Celery node name (``ping`` answers to it)."""

    def __init__(self, env: Mapping[str, str], log_dir: Path, *, pool: str = "threads", concurrency: int = 2):
        self.hostname = f"sr-{secrets.token_hex(4)}@{LOOPBACK}"
        self.paused: list[WorkerHandle] = []  # workers this one took the queue from; given back on stop()
        super().__init__(
            f"worker-{self.hostname.split('@')[0]}",
            ["worker", "--pool", pool, "--concurrency", str(concurrency), "--hostname", self.hostname],
            env,
            log_dir,
        )

    def ping(self) -> bool:
        """True when the worker answers a Celery control ping addressed to its node name."""
        from celery import Celery

        app = Celery(broker=self.env["REDIS_URL"])
        try:
            replies = app.control.inspect(destination=[self.hostname], timeout=1.0).ping() or {}
        except Exception:
            return False
        finally:
            app.close()
        return self.hostname in replies

    def set_consuming(self, consuming: bool, attempts: int = 10) -> None:
        """Stop or resume taking tasks from the queue, so a test's specially configured worker is the only
        consumer while it runs (otherwise the session's default worker may take its tasks). Retried until the
        worker confirms: a test may just have restarted Redis."""
        from celery import Celery

        for attempt in range(attempts):
            app = Celery(broker=self.env["REDIS_URL"])
            try:
                control = app.control.add_consumer if consuming else app.control.cancel_consumer
                if control(QUEUE, destination=[self.hostname], reply=True, timeout=5):
                    return
            except Exception:  # the broker may be coming back after a restart: try again
                pass
            finally:
                app.close()
            time.sleep(min(0.5 * (attempt + 1), 2))
        raise EmbeddedServerError(f"{self.name} did not confirm {'add' if consuming else 'cancel'}_consumer")

    def stop(self, timeout: float = 10.0) -> int | None:
        code = super().stop(timeout)
        for other in self.paused:
            if other.running():
                other.set_consuming(True)
        self.paused = []
        return code

    def wait_ready(self, timeout: float = 60.0) -> WorkerHandle:
        try:
            wait_for(self.ping, timeout=timeout, what=self.name, alive=self.running)
        except EmbeddedServerError as exc:
            raise self._ready_failed("worker did not answer ping", exc) from None
        return self


class BeatHandle(ServiceHandle):
    def __init__(self, env: Mapping[str, str], log_dir: Path) -> None:
        name = f"beat-{secrets.token_hex(3)}"
        schedule = log_dir / f"{name}-schedule"
        super().__init__(name, ["beat", "--schedule", str(schedule)], env, log_dir)

    def wait_ready(self, timeout: float = 30.0) -> BeatHandle:
        try:
            wait_for(lambda: "beat: Starting" in self.logs(), timeout=timeout, what=self.name, alive=self.running)
        except EmbeddedServerError as exc:
            raise self._ready_failed("beat did not start", exc) from None
        return self


class ApiHandle(ServiceHandle):
    def __init__(self, env: Mapping[str, str], log_dir: Path) -> None:
        self.port = free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        # Pinned like production requires, so tests exercise the authority check (overridable per test).
        authorities = env.get("STRONGROOM_PUBLIC_AUTHORITIES") or f"{LOOPBACK}:{self.port}"
        env = {
            **env,
            "STRONGROOM_API_HOST": LOOPBACK,
            "STRONGROOM_API_PORT": str(self.port),
            "STRONGROOM_PUBLIC_AUTHORITIES": authorities,
        }
        super().__init__(f"api-{self.port}", ["api"], env, log_dir)

    def healthy(self) -> bool:
        try:
            return httpx.get(f"{self.url}/healthz", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_ready(self, timeout: float = 30.0) -> ApiHandle:
        try:
            wait_for(self.healthy, timeout=timeout, what=self.name, alive=self.running)
        except EmbeddedServerError as exc:
            raise self._ready_failed("GET /healthz never answered 200", exc) from None
        return self


def stop_all(timeout: float = 10.0) -> None:
    """Stop every handle started this session, newest first (SIGTERM, then SIGKILL after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while STARTED:
        handle = STARTED.pop()
        handle.stop(max(0.5, deadline - time.monotonic()))
