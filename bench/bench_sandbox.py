"""Wall time of one agent run in the bwrap sandbox next to the same run without it (STRONGROOM_AGENT_SANDBOX=none).

The difference is what the sandbox costs per run: bwrap's start-up (namespaces, mounts), holding the scratch
tmpfs, and tearing the PID namespace down. Measured through ``run_agent`` as the worker calls it, for ``true``
(the fixed cost) and for the built-in privacy-audit agent (a real Python program).

    .venv/bin/python bench/bench_sandbox.py [--runs 20]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from shared.settings import Settings
from worker_service.agents import registry
from worker_service.agents.inputs import write_input
from worker_service.agents.runner import Limits, run_agent
from worker_service.agents.sandbox import SandboxPolicy
from worker_service.agents.workdir import fresh_workdir

LIMITS = Limits(max_execution_time=60, max_disk_usage=64 << 20, max_artifact_count=50, max_artifact_size=8 << 20)


def _median_ms(runs: int, argv_for: str, policy: SandboxPolicy, base: Path) -> float:
    settings = Settings.from_env({"REDIS_URL": "redis://127.0.0.1:1/0"})
    spec = registry.resolve(settings, registry.PRIVACY_AUDIT)
    times = []
    for _ in range(runs):
        with fresh_workdir(base) as workdir:
            agent_input = {"text": "mail alice@example.com, call +44 20 7946 0958"}
            write_input(workdir, agent_input)
            argv = ["/bin/true"] if argv_for == "true" else spec.argv(workdir, agent_input)
            started = time.perf_counter()
            run = run_agent(argv, workdir, LIMITS, policy=policy, mounts=spec.mounts, poll_interval=0.05)
            times.append((time.perf_counter() - started) * 1000)
            assert run.exit_code == 0, run.logs
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-sandbox-") as base:
        print("| agent | unsandboxed (ms) | bwrap (ms) | sandbox cost (ms) |")
        print("|---|---|---|---|")
        for agent in ("true", "privacy-audit"):
            plain = _median_ms(args.runs, agent, SandboxPolicy("none"), Path(base))
            boxed = _median_ms(args.runs, agent, SandboxPolicy("bwrap"), Path(base))
            print(f"| {agent} | {plain:.1f} | {boxed:.1f} | {boxed - plain:+.1f} |")


if __name__ == "__main__":
    main()
