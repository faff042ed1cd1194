"""Run one agent in its sandbox (``sandbox``) under the limits, and report what happened.

The agent protocol (documented for operators writing command agents in docs/agents.md):

* the agent starts in its run directory; ``input.json`` there holds the operation input and ``in/`` the input
  files (``{"files": {name: base64}}``), both read-only; it writes its artifacts into ``out/`` and may use
  ``tmp/`` (``TMPDIR``, also ``/tmp``) and ``home/`` (``HOME``), which share one scratch tmpfs;
* its environment is scrubbed: ``PATH``, ``HOME``, ``LANG``, ``TMPDIR`` and the ``AGENT_*`` variables below, and
  nothing else (no strongroom, S3 or Redis credentials);
* it may print, as its last JSON line on stdout, ``{"status": "ok"|"error", "summary": "..."}``;
* it is stopped (SIGTERM, then SIGKILL of its whole PID namespace) when it exceeds the wall-clock time or the
  disk limit, or when the operation is cancelled; kernel limits cap file size, CPU time, open files, processes,
  core dumps and the scratch space; the disk limit is checked once more after it exited, before anything is read;
* when it ends, nothing it started survives (its PID namespace ends with it).

``STRONGROOM_AGENT_SANDBOX=none`` (development only) runs the agent as a plain process group instead: then only
the environment, the limits and the kill of that group apply, and each result says so.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

import structlog

from shared import bounded_json
from shared.settings import Settings
from worker_service.agents import sandbox
from worker_service.agents.sandbox import Sandbox, SandboxPolicy
from worker_service.agents.workdir import Workdir

log = structlog.get_logger(__name__)

Outcome = Literal["exited", "timeout", "disk", "cancelled"]

LOG_LINES = 50  # lines of agent output kept for result.logs
LOG_LINE_BYTES = 1000  # longer lines are cut: memory stays bounded by LOG_LINES * LOG_LINE_BYTES
KILL_GRACE = 3.0  # seconds between SIGTERM and SIGKILL
FSIZE_MARGIN = 1024 * 1024  # lets the out/ check name the limit instead of the agent dying on EFBIG
OPEN_FILES = 1024
MAX_PROCESSES = 1024  # RLIMIT_NPROC in the sandbox (see docs/agents.md for what it counts)
UNSANDBOXED_WARNING = "warning: STRONGROOM_AGENT_SANDBOX=none: this agent ran without a sandbox (development only)"
_SAFE_ENV = ("LANG", "LC_ALL", "TZ")


@dataclass(frozen=True)
class Limits:
    """The design's AGENT_RESOURCE_LIMITS, as the runner and the out/ check enforce them."""

    max_execution_time: float
    max_disk_usage: int
    max_artifact_count: int
    max_artifact_size: int

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(
            max_execution_time=float(settings.max_execution_time),
            max_disk_usage=settings.max_disk_usage,
            max_artifact_count=settings.max_artifact_count,
            max_artifact_size=settings.max_artifact_size,
        )


@dataclass
class AgentRun:
    """What the runner observed; the pipeline turns it into a status and ``result``."""

    outcome: Outcome
    exit_code: int | None
    execution_time: float
    logs: list[str] = field(default_factory=list)
    reported: dict[str, Any] | None = None  # the agent's final JSON line, if any
    disk_usage: int = 0

    @property
    def reported_status(self) -> str | None:
        value = (self.reported or {}).get("status")
        return value if isinstance(value, str) else None

    @property
    def reported_summary(self) -> str | None:
        value = (self.reported or {}).get("summary")
        return value[:2000] if isinstance(value, str) else None


def agent_environment(workdir: Workdir, parent: dict[str, str] | None = None) -> dict[str, str]:
    """Only harmless variables reach the agent: never STRONGROOM_*, AWS_*, REDIS_* or anything else.

    ``PATH`` is the sandbox's own (what ``/usr`` holds), not the worker's: its venv is not there.
    """
    source = os.environ if parent is None else parent
    env = {name: source[name] for name in _SAFE_ENV if name in source}
    env["PATH"] = sandbox.SANDBOX_PATH
    env.setdefault("LANG", "C.UTF-8")
    env.update(
        HOME=str(workdir.home_dir),
        TMPDIR=str(workdir.tmp_dir),
        AGENT_WORKDIR=str(workdir.root),
        AGENT_INPUT=str(workdir.input_file),
        AGENT_INPUT_DIR=str(workdir.in_dir),
        AGENT_OUTPUT_DIR=str(workdir.out_dir),
        PYTHONDONTWRITEBYTECODE="1",
        PYTHONUNBUFFERED="1",
    )
    return env


def _rlimits(limits: Limits, *, processes: bool) -> Callable[[], None]:
    """Kernel limits applied in the child between fork and exec (only plain system calls there).

    ``processes``: RLIMIT_NPROC too. Only in the sandbox, where the worker's UID runs nothing but the worker
    and its agents; unsandboxed, the count would include whatever else that user runs.
    """
    cpu = max(1, int(limits.max_execution_time))
    fsize = limits.max_artifact_size + FSIZE_MARGIN

    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 5))
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
        resource.setrlimit(resource.RLIMIT_NOFILE, (OPEN_FILES, OPEN_FILES))
        if processes:
            resource.setrlimit(resource.RLIMIT_NPROC, (MAX_PROCESSES, MAX_PROCESSES))

    return apply


def disk_usage(root: Path) -> int:
    """Bytes under ``root``, each inode once (a hard link adds nothing), at the larger of its apparent and its
    allocated size: a sparse file counts at its size (it could be uploaded), a preallocated one at its blocks."""
    total = 0
    seen: set[tuple[int, int]] = set()
    stack = [str(root)]
    while stack:
        try:
            with os.scandir(stack.pop()) as entries:
                for entry in entries:
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue  # vanished while we looked
                    if (st.st_dev, st.st_ino) not in seen:
                        seen.add((st.st_dev, st.st_ino))
                        total += max(st.st_size, st.st_blocks * 512)
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
        except OSError:
            continue
    return total


class _Tail:
    """The last LOG_LINES lines of a pipe, each cut to LOG_LINE_BYTES: bounded memory however much is printed."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self._lines: deque[str] = deque(maxlen=LOG_LINES)
        self._thread = threading.Thread(target=self._pump, name="agent-output", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        skipping = False
        for raw in iter(lambda: self._stream.readline(LOG_LINE_BYTES), b""):
            complete = raw.endswith(b"\n")
            if not skipping:
                text = raw.decode("utf-8", "replace").rstrip("\r\n")
                self._lines.append(text if complete else text + " [...]")
            skipping = not complete  # drop the rest of an overlong line
        self._stream.close()

    def lines(self, timeout: float = 2.0) -> list[str]:
        self._thread.join(timeout)  # unsandboxed, an escaped grandchild may keep the pipe open: do not hang
        return list(self._lines)


def final_report(lines: list[str]) -> dict[str, Any] | None:
    """The last line that is a JSON object with a ``status`` or ``summary``: the agent's own verdict."""
    for line in reversed(lines):
        stripped = line.strip()
        if not stripped.startswith("{"):
            continue
        try:
            value = bounded_json.loads(stripped)  # the agent's text: nesting is bounded (JsonTooDeep is a ValueError)
        except ValueError:
            continue
        if isinstance(value, dict) and ("status" in value or "summary" in value):
            return value
    return None


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    """Signal the agent's whole process group (``start_new_session`` makes the agent its leader); gone is fine."""
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


# --- the agent's process, sandboxed or not


class _Unsandboxed:
    """``STRONGROOM_AGENT_SANDBOX=none``: the agent as a plain process group (development only)."""

    def __init__(self, proc: subprocess.Popen[bytes], workdir: Workdir) -> None:
        self.proc = proc
        self._root = workdir.root

    def usage(self) -> int:
        return disk_usage(self._root)

    def terminate(self) -> None:
        _signal_group(self.proc, signal.SIGTERM)

    def kill(self) -> None:
        _signal_group(self.proc, signal.SIGKILL)  # also members that outlived the leader
        self.proc.wait()

    def finish(self) -> None:
        self.kill()

    def close(self) -> None:
        pass


class _Sandboxed:
    """The agent in its bwrap sandbox: usage is ``out/`` on disk plus the scratch tmpfs."""

    def __init__(self, box: Sandbox, workdir: Workdir) -> None:
        self.box = box
        self.proc = box.proc
        self._out = workdir.out_dir

    def usage(self) -> int:
        return disk_usage(self._out) + self.box.scratch_used()

    def terminate(self) -> None:
        self.box.terminate()

    def kill(self) -> None:
        self.box.kill()

    def finish(self) -> None:
        self.box.finish()

    def close(self) -> None:
        self.box.close()


_Agent = _Sandboxed | _Unsandboxed


def run_agent(
    argv: list[str],
    workdir: Workdir,
    limits: Limits,
    *,
    should_stop: Callable[[], bool] = lambda: False,
    poll_interval: float = 0.5,
    parent_env: dict[str, str] | None = None,
    policy: SandboxPolicy | None = None,
    mounts: Iterable[Path] = (),
) -> AgentRun:
    """Run ``argv`` (never through a shell) in ``workdir`` under ``limits`` and wait for it.

    ``should_stop`` is called every ``poll_interval`` seconds (the pipeline refreshes its lease and reads the
    cancel flag there); returning True stops the agent and reports ``cancelled``. ``mounts`` are what the
    program needs besides ``/usr`` (read-only in the sandbox). ``policy`` defaults to the bwrap sandbox;
    ``sandbox.SandboxUnavailable`` means the agent was not started because the sandbox could not be created.
    """
    policy = SandboxPolicy() if policy is None else policy
    env = agent_environment(workdir, parent_env)
    started = time.monotonic()
    agent = _start(argv, workdir, limits, policy, env, mounts)
    assert agent.proc.stdout is not None
    tail = _Tail(agent.proc.stdout)
    log.info("agent.started", pid=agent.proc.pid, program=Path(argv[0]).name, sandbox=policy.kind,
             network=policy.network)  # fmt: skip
    try:
        outcome, usage = _watch(agent, limits, should_stop, poll_interval, started)
        if outcome != "exited":
            agent.terminate()
            with suppress(subprocess.TimeoutExpired):
                agent.proc.wait(timeout=KILL_GRACE)
        agent.finish()  # nothing of the run is left running from here on
        if outcome == "exited":  # what it wrote between the last look and its end counts too
            usage = agent.usage()
            if usage >= limits.max_disk_usage:  # a full scratch tmpfs: the kernel stopped it at the limit
                outcome = "disk"
    finally:
        agent.close()
    elapsed = time.monotonic() - started
    lines = tail.lines()
    if isinstance(agent, _Sandboxed) and not agent.box.started and outcome == "exited" and not _exec_failed(lines):
        raise sandbox.refusal(lines, policy)  # bwrap never exec'd the agent: everything printed is bwrap's
    if not policy.sandboxed:
        lines = [*lines[-(LOG_LINES - 1) :], UNSANDBOXED_WARNING]
    exit_code = _exit_code(agent.proc.returncode, policy) if outcome == "exited" else None
    log.info("agent.ended", outcome=outcome, exit_code=exit_code, seconds=round(elapsed, 3), disk=usage)
    return AgentRun(outcome, exit_code, elapsed, lines, final_report(lines), usage)


def _exec_failed(lines: list[str]) -> bool:
    """bwrap built the sandbox but the program is not there (a wrong command, a missing ``mounts`` entry)."""
    return any(line.startswith("bwrap: execvp ") for line in lines)


def _exit_code(code: int, policy: SandboxPolicy) -> int:
    """bwrap reports an agent killed by signal N as exit status 128+N; shown like Popen does (-N)."""
    if policy.sandboxed and 128 < code <= 128 + 64:
        return -(code - 128)
    return code


def _start(
    argv: list[str],
    workdir: Workdir,
    limits: Limits,
    policy: SandboxPolicy,
    env: dict[str, str],
    mounts: Iterable[Path],
) -> _Agent:
    if policy.sandboxed:
        box = sandbox.start(
            argv, workdir, policy, env, scratch_bytes=limits.max_disk_usage, mounts=mounts,
            preexec=_rlimits(limits, processes=True),
        )  # fmt: skip
        return _Sandboxed(box, workdir)
    log.warning("agent.unsandboxed", setting=f"{sandbox.SANDBOX_VAR}=none")
    proc = subprocess.Popen(
        argv,
        cwd=workdir.root,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=_rlimits(limits, processes=False),
    )
    return _Unsandboxed(proc, workdir)


def _watch(
    agent: _Agent, limits: Limits, should_stop: Callable[[], bool], poll_interval: float, started: float
) -> tuple[Outcome, int]:
    """The watchdog loop: returns why the agent stopped (or must be stopped) and the last disk usage seen."""
    usage = 0
    while True:
        try:
            agent.proc.wait(timeout=poll_interval)
            return "exited", usage
        except subprocess.TimeoutExpired:
            pass
        usage = agent.usage()
        if usage >= limits.max_disk_usage:
            return "disk", usage
        if time.monotonic() - started > limits.max_execution_time:
            return "timeout", usage
        if should_stop():
            return "cancelled", usage
