"""A clean agent host (nothing but its agents as children) for the run-attribution tests.

Claiming orphans kills every unattributed child of the host, so these checks cannot run inside pytest (whose
children include the session's Redis and S3 servers). Prints one JSON line:

    race_host.py race RUNS THREADS   many concurrent short runs; {"exit_codes": [...], "outcomes": [...]}
    race_host.py inflight            an unregistered child while a spawn is in flight, then without one;
                                     {"spared_in_flight": bool, "claimed_after": int, "gone_after": bool}
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import tempfile
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


def main(mode: str, *args: str) -> int:
    sandbox.protect_worker_process(claim_orphans=True)
    result = race(int(args[0]), int(args[1])) if mode == "race" else inflight()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
