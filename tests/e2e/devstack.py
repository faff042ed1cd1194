"""One `strongroom dev` run as a test drives it: a subprocess on a data dir, its console captured in a file."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from strongroom.dev.servers import ManagedProcess, wait_for

READY = "strongroom ready:"


def clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without any strongroom, AWS or Redis setting: what a fresh shell has."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STRONGROOM_", "AWS_", "REDIS_"))}
    return {**env, **extra}


class Dev:
    """One `strongroom dev` run on a data dir, with its output in a log file."""

    def __init__(
        self, data_dir: Path, port: int, log: Path, *, env: Mapping[str, str] | None = None, cwd: Path | None = None
    ) -> None:
        self.data_dir = data_dir
        self.url = f"http://127.0.0.1:{port}"
        self.process = ManagedProcess(
            [sys.executable, "-m", "strongroom", "dev", "--data-dir", str(data_dir), "--port", str(port)],
            log_path=log,
            env=clean_env(STRONGROOM_LOG_FORMAT="json") if env is None else env,
            cwd=cwd,
            name="dev",
        )

    def start(self) -> Dev:
        self.process.start()
        try:
            wait_for(lambda: READY in self.process.logs(), timeout=120, what="dev", alive=self.process.running)
        except Exception:
            pytest.fail(f"strongroom dev never got ready:\n{self.process.logs()[-6000:]}")
        assert httpx.get(f"{self.url}/readyz", timeout=5).status_code == 200
        return self

    def descendants(self) -> set[int]:
        """Every process below dev (children and grandchildren), from /proc."""
        parents: dict[int, int] = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                parents[int(entry.name)] = int(fields[1])
        found: set[int] = set()
        frontier = {self.process.pid}
        while frontier:
            frontier = {pid for pid, ppid in parents.items() if ppid in frontier} - found
            found |= frontier
        return found

    def interrupt(self) -> float:
        """Ctrl-C: SIGINT to dev only (its children are in their own groups); returns seconds until it exited."""
        started = time.monotonic()
        os.kill(self.process.pid, signal.SIGINT)
        wait_for(lambda: not self.process.running(), timeout=15, what="dev shutdown")
        return time.monotonic() - started


@dataclass(frozen=True)
class DevStack:
    dev: Dev
    home: Path  # the project directory: its .strongroom is dev's data dir
    identity_path: Path
    operation: str  # a succeeded privacy-audit operation of that identity

    @property
    def url(self) -> str:
        return self.dev.url

    @property
    def data_dir(self) -> Path:
        return self.dev.data_dir
