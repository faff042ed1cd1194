"""A stand-in for the worker process: run one agent through ``run_agent`` and print what happened as JSON.

The sandbox tests start it as a separate process (possibly as an unprivileged user, so RLIMIT_NPROC applies) so
that what the agent can do to its *parent* is observed on a process other than pytest:

    host.py '{"argv": [...], "base": "/dir", "mounts": [...]}'

It prints ``{"outcome", "exit_code", "logs", "outputs": {name: text}}``; the agent's ``out/`` files must be text.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(spec_json: str) -> int:
    from worker_service.agents.runner import Limits, run_agent
    from worker_service.agents.workdir import fresh_workdir

    spec = json.loads(spec_json)
    limits = Limits(max_execution_time=20, max_disk_usage=50 << 20, max_artifact_count=5, max_artifact_size=1 << 20)
    with fresh_workdir(Path(spec["base"])) as workdir:
        run = run_agent(
            spec["argv"], workdir, limits, poll_interval=0.1, mounts=[Path(m) for m in spec.get("mounts", [])]
        )
        outputs = {item.name: item.read_text() for item in sorted(workdir.out_dir.iterdir())}
    print(json.dumps({"outcome": run.outcome, "exit_code": run.exit_code, "logs": run.logs, "outputs": outputs}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
