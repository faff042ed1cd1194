"""`strongroom dev` restarts a child that died, alone, and says so (issue 10 item 2): a worker killed with SIGKILL
used to make dev stop everything (``child exited; stopping everything``)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from strongroom.client.identity import generate_identity
from strongroom.client.sdk import StrongroomClient
from strongroom.dev.servers import wait_for
from tests.e2e.devstack import Dev
from tests.helpers.ports import free_port

pytestmark = pytest.mark.e2e


def child_pid(dev: Dev, command: str) -> int | None:
    """The pid of dev's direct child running ``strongroom <command>``, if there is one alive."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(fields[1]) == dev.process.pid and fields[0] != "Z" and argv[1:4] == [b"-m", b"strongroom", command]:
            return int(entry.name)
    return None


def test_a_killed_worker_is_restarted_alone_and_runs_the_next_operation(tmp_path: Path) -> None:
    dev = Dev(tmp_path / "data", free_port(), tmp_path / "dev.log").start()
    try:
        api, worker = child_pid(dev, b"api"), child_pid(dev, b"worker")
        assert api is not None and worker is not None
        os.killpg(worker, signal.SIGKILL)  # each child leads its own process group

        wait_for(lambda: "worker exited (code -9); restarting it" in dev.process.logs(), timeout=30, what="notice")
        wait_for(lambda: child_pid(dev, b"worker") not in (None, worker), timeout=60, what="a new worker")
        assert dev.process.running(), dev.process.logs()[-3000:]
        assert child_pid(dev, b"api") == api  # the others never stopped

        with StrongroomClient(dev.url, generate_identity()) as client:
            created = client.create("privacy-audit", {"text": "contact: alice@example.com"})
            assert client.wait(created.id, timeout=120, initial_interval=0.2).status == "succeeded"
        dev.interrupt()
        assert dev.process.returncode() == 0, dev.process.logs()[-3000:]
    finally:
        dev.process.stop()
