"""A clean agent host (nothing but its agents as children) for the run-attribution tests.

Claiming orphans kills every unattributed child of the host, so these checks cannot run inside pytest (whose
children include the session's Redis and S3 servers). Prints one JSON line:

    race_host.py race RUNS THREADS   many concurrent short runs; {"exit_codes": [...], "outcomes": [...]}
    race_host.py inflight            an unregistered child while a spawn is in flight, then without one;
                                     {"spared_in_flight": bool, "claimed_after": int, "gone_after": bool}
    race_host.py prefork             this process as the prefork main: a pool process leaves an escaped agent
                                     descendant and dies; {"escapee_gone": bool, "pool_process_alive": bool}
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from worker_service.agents import sandbox
from worker_service.agents.runner import AgentRun, Limits, fresh_workdir, run_agent
from worker_service.agents.sandbox import RunTracker, SandboxPolicy

LIMITS = Limits(max_execution_time=20, max_disk_usage=50 << 20, max_artifact_count=5, max_artifact_size=1 << 20)
POLICY = SandboxPolicy.from_spec("self", "allowed")  # the race is about processes, not users


def _short_run(base: Path) -> AgentRun:
    with fresh_workdir(base, POLICY) as workdir:
        return run_agent(["/bin/sh", "-c", "exit 0"], workdir, LIMITS, poll_interval=0.05, policy=POLICY)


def race(runs: int, threads: int) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix="sr-race-"))
    try:
        with ThreadPoolExecutor(threads) as pool:
            done = list(pool.map(lambda _: _short_run(base), range(runs)))
    finally:
        os.rmdir(base)
    return {"exit_codes": [run.exit_code for run in done], "outcomes": [run.outcome for run in done]}


def inflight() -> dict[str, Any]:
    child = os.fork()
    if child == 0:  # a stand-in for an agent whose run is not registered yet
        os.setsid()
        os.execv("/bin/sleep", ["sleep", "30"])
    info = sandbox.read_proc(child)
    while info is None or info.sid != child:
        info = sandbox.read_proc(child)
    with sandbox.spawning():
        RunTracker(root_pid=2**22 + 7, token=secrets.token_hex(8)).kill_all()
        still = sandbox.read_proc(child)
        spared = still is not None and still.state != "Z"
    claimed = RunTracker(root_pid=2**22 + 7, token=secrets.token_hex(8)).kill_all()
    gone = sandbox.read_proc(child) is None
    if not gone:
        os.kill(child, 9)
        os.waitpid(child, 0)
    return {"spared_in_flight": spared, "claimed_after": claimed, "gone_after": gone}


def _wait_for_pid(path: Path) -> int:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().endswith("\n"):
            return int(path.read_text())
        time.sleep(0.01)
    raise TimeoutError(str(path))


def prefork() -> dict[str, Any]:
    """A dying pool process's escaped agent descendant is swept; a live pool process (same session) is not."""
    pidfile = Path(tempfile.mkdtemp(prefix="sr-prefork-")) / "escapee.pid"
    pool = os.fork()
    if pool == 0:  # a pool process that dies right after an agent's descendant escaped into its own session
        if os.fork() == 0:
            os.setsid()
            pidfile.write_text(f"{os.getpid()}\n")
            os.execv("/bin/sleep", ["sleep", "30"])
        os._exit(0)
    live_pool = os.fork()
    if live_pool == 0:  # a healthy pool process: same session as the main process
        os.execv("/bin/sleep", ["sleep", "30"])
    os.waitpid(pool, 0)  # billiard reaps its own pool processes
    escapee = _wait_for_pid(pidfile)
    deadline = time.monotonic() + 10
    while (info := sandbox.read_proc(escapee)) is not None and info.ppid != os.getpid():
        if time.monotonic() > deadline:
            raise TimeoutError("the escapee was not reparented to this subreaper")
        time.sleep(0.01)
    for _ in range(20):
        sandbox.sweep_foreign_sessions()
        if sandbox.read_proc(escapee) is None:
            break
        time.sleep(0.05)
    live = sandbox.read_proc(live_pool)
    result = {"escapee_gone": sandbox.read_proc(escapee) is None, "pool_process_alive": live is not None}
    os.kill(live_pool, 9)
    os.waitpid(live_pool, 0)
    return result


def main(mode: str, *args: str) -> int:
    sandbox.protect_worker_process(claim_orphans=True)
    modes = {"race": lambda: race(int(args[0]), int(args[1])), "inflight": inflight, "prefork": prefork}
    result = modes[mode]()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
