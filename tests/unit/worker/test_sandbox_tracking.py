"""Which processes belong to which run: concurrent runs in one agent host never kill or reap each other's.

Review 2, finding 3: with the threads pool, run A's cleanup claimed run B's freshly forked agent as an orphan
(it was not registered yet) and SIGKILLed it, about one run in ten. Finding 10: a new session whose id reuses an
old member's pid was attributed to the old run. The host-level checks run in tests/agents/race_host.py, a clean
agent host: claiming orphans inside pytest would kill the session's Redis and S3 servers.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from worker_service.agents.sandbox import ProcInfo, RunTracker

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[3]
RACE_HOST = str(REPO / "tests" / "agents" / "race_host.py")


def race_host(*args: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, RACE_HOST, *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_many_concurrent_short_runs_never_kill_each_other() -> None:
    result = race_host("race", "300", "8")
    assert result["outcomes"] == ["exited"] * 300
    assert [code for code in result["exit_codes"] if code != 0] == []  # -9: another run's cleanup killed it


def test_orphan_claiming_waits_while_a_spawn_is_in_flight() -> None:
    """A child no run accounts for yet is spared while a spawn is in flight, and claimed once none is."""
    assert race_host("inflight") == {"spared_in_flight": True, "claimed_after": 1, "gone_after": True}


def test_prefork_main_sweeps_what_a_dead_pool_process_left() -> None:
    """Finding 11: the prefork main process is a subreaper; it must not collect escaped agents forever."""
    assert race_host("prefork") == {"escapee_gone": True, "pool_process_alive": True}


def test_only_a_prefork_worker_starts_the_sweeper() -> None:
    from worker_service import celery_app

    class Worker:
        def __init__(self, pool: str) -> None:
            self.pool_cls = pool

    assert celery_app._is_prefork(Worker("prefork"))
    assert not celery_app._is_prefork(Worker("threads")) and not celery_app._is_prefork(Worker("solo"))


# --- finding 10: session ids are pids, and pids are reused ----------------------------------------------------------


def _info(pid: int, ppid: int, sid: int, start: int) -> ProcInfo:
    return ProcInfo(pid=pid, ppid=ppid, sid=sid, state="S", starttime=start)


def test_a_new_session_reusing_an_old_members_pid_is_not_ours() -> None:
    me = os.getpid()
    tracker = RunTracker(root_pid=2**22 + 9, token=secrets.token_hex(8))  # no such process: no members yet
    try:
        old_leader = _info(4242, me, 4242, start=100)
        tracker.members[old_leader.key] = old_leader
        tracker.sessions.add(4242)
        reused = _info(4242, me, 4242, start=999)  # pid 4242 again: a new process, leader of a new session
        its_child = _info(4243, 4242, 4242, start=1000)
        stranger = _info(4244, me, 4242, start=1001)  # reparented here; its leader is alive and not ours
        tracker.observe({p.pid: p for p in (reused, its_child, stranger)})
        assert not any(tracker.owns(p) for p in (reused, its_child, stranger))

        survivor = _info(5000, me, 4242, start=150)  # our old session with its leader gone: still ours
        tracker.observe({survivor.pid: survivor})
        assert tracker.owns(survivor)
    finally:
        tracker.close()
