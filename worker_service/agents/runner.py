"""Run one agent as a sandboxed child process group and report what happened.

The agent protocol (documented for operators writing command agents):

* the agent starts in a fresh working directory; ``input.json`` there holds the operation input, ``in/`` holds
  the input files (``{"files": {name: base64}}``), the agent writes its artifacts into ``out/``, and may write
  to ``tmp/`` (``TMPDIR``) and ``home/`` (``HOME``); the directory itself is not writable by a separate agent
  user, so ``out/`` cannot be replaced;
* its environment is scrubbed: ``PATH``, ``HOME``, ``LANG``, ``TMPDIR`` and the ``AGENT_*`` variables below, and
  nothing else (no strongroom, S3 or Redis credentials);
* it may print, as its last JSON line on stdout, ``{"status": "ok"|"error", "summary": "..."}``;
* it is killed (the whole process group: SIGTERM, then SIGKILL) when it exceeds the wall-clock time or the disk
  usage of its working directory, or when the operation is cancelled; kernel limits cap file size, CPU time,
  open files and core dumps;
* when it ends, every process it left behind is killed too, including descendants that started their own
  session (``sandbox.RunTracker``); it may run as a separate user and without network (``sandbox.SandboxPolicy``).

Why a process group, a watchdog and the primitives in ``sandbox`` rather than a container: the worker must run
anywhere Celery runs (including ``strongroom dev`` on a laptop and a non-root container); docs/agents.md says
what this does and does not isolate.
"""

from __future__ import annotations

import os
import resource
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

import structlog

from shared import bounded_json
from shared.settings import Settings
from worker_service.agents import sandbox
from worker_service.agents.sandbox import SandboxPolicy

log = structlog.get_logger(__name__)

Outcome = Literal["exited", "timeout", "disk", "cancelled"]

LOG_LINES = 50  # lines of agent output kept for result.logs
LOG_LINE_BYTES = 1000  # longer lines are cut: memory stays bounded by LOG_LINES * LOG_LINE_BYTES
KILL_GRACE = 3.0  # seconds between SIGTERM and SIGKILL
FSIZE_MARGIN = 1024 * 1024  # lets the out/ check name the limit instead of the agent dying on EFBIG
OPEN_FILES = 1024
_SAFE_ENV = ("PATH", "LANG", "LC_ALL", "TZ")
_DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"


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


@dataclass(frozen=True)
class Workdir:
    """The agent's fresh directory: ``input.json``, ``in/``, ``out/``, ``tmp/`` and ``home/`` (its ``HOME``).

    The root itself stays the worker's (``sandbox.hand_over`` gives a separate agent user only the
    subdirectories), so the agent cannot swap ``out/`` for a link to somewhere only the worker may read.
    """

    root: Path

    @property
    def input_file(self) -> Path:
        return self.root / "input.json"

    @property
    def in_dir(self) -> Path:
        return self.root / "in"

    @property
    def out_dir(self) -> Path:
        return self.root / "out"

    @property
    def tmp_dir(self) -> Path:
        return self.root / "tmp"

    @property
    def home_dir(self) -> Path:
        return self.root / "home"

    @property
    def agent_dirs(self) -> tuple[Path, ...]:
        """What the agent may write to (everything else in the root is the worker's)."""
        return (self.in_dir, self.out_dir, self.tmp_dir, self.home_dir)


# out/ directories fresh_workdir created, by path: (st_dev, st_ino), so the worker can tell that the out/ it
# reads is the one it made (outputs.open_out_dir), not a directory or link put in its place.
_created_out: dict[str, tuple[int, int]] = {}
_created_lock = threading.Lock()


def created_out_dir(path: Path) -> tuple[int, int] | None:
    """(st_dev, st_ino) of ``path`` as ``fresh_workdir`` created it; None for a directory it did not create."""
    with _created_lock:
        return _created_out.get(str(path))


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


@contextmanager
def fresh_workdir(base: Path | None, policy: SandboxPolicy | None = None) -> Iterator[Workdir]:
    """A private (0700) directory for one run, removed afterwards whatever happened.

    With a separate agent user, ``base`` may be swapped for a directory that user can reach
    (``sandbox.agent_base``); ``run_agent`` hands the directory over to it.
    """
    policy = SandboxPolicy.from_env() if policy is None else policy
    base = sandbox.agent_base(base, policy.identity)
    if base is not None:
        base.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="strongroom-agent-", dir=base))
    workdir = Workdir(root)
    key = str(workdir.out_dir)
    try:
        for sub in workdir.agent_dirs:
            sub.mkdir(mode=0o700)
        st = workdir.out_dir.lstat()
        with _created_lock:
            _created_out[key] = (st.st_dev, st.st_ino)
        yield workdir
    finally:
        with _created_lock:
            _created_out.pop(key, None)
        shutil.rmtree(root, ignore_errors=True)


def agent_environment(
    workdir: Workdir, parent: dict[str, str] | None = None, run_id: str | None = None
) -> dict[str, str]:
    """Only harmless variables reach the agent: never STRONGROOM_*, AWS_*, REDIS_* or anything else.

    ``run_id`` (``AGENT_RUN_ID``) is one of the marks the runner finds the run's processes by; it is random
    per run and worthless outside it.
    """
    source = os.environ if parent is None else parent
    env = {name: source[name] for name in _SAFE_ENV if name in source}
    env.setdefault("PATH", _DEFAULT_PATH)
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
    if run_id is not None:
        env[sandbox.RUN_ID_VAR] = run_id
    return env


def _rlimits(limits: Limits) -> Callable[[], None]:
    """Kernel limits applied in the child between fork and exec (only async-signal-safe work there)."""
    cpu = max(1, int(limits.max_execution_time))
    fsize = limits.max_artifact_size + FSIZE_MARGIN

    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 5))
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
        resource.setrlimit(resource.RLIMIT_NOFILE, (OPEN_FILES, OPEN_FILES))

    return apply


def disk_usage(root: Path) -> int:
    """Bytes under ``root`` (like ``du``, but a sparse file counts at its apparent size: it could be uploaded)."""
    total = 0
    stack = [str(root)]
    while stack:
        try:
            with os.scandir(stack.pop()) as entries:
                for entry in entries:
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue  # vanished while we looked
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
        self._thread.join(timeout)  # a grandchild that escaped the group may keep the pipe open: do not hang
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


def _signal_group(pgid: int, sig: signal.Signals) -> bool:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def kill_group(proc: subprocess.Popen[bytes], grace: float = KILL_GRACE) -> None:
    """SIGTERM the whole group, SIGKILL it after ``grace``: an agent ignoring SIGTERM still dies."""
    pgid = proc.pid  # start_new_session makes the child a group leader
    if not _signal_group(pgid, signal.SIGTERM):
        return
    with suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace)
    _signal_group(pgid, signal.SIGKILL)  # also reaps members that outlived the leader
    proc.wait()


def run_agent(
    argv: list[str],
    workdir: Workdir,
    limits: Limits,
    *,
    should_stop: Callable[[], bool] = lambda: False,
    poll_interval: float = 0.5,
    parent_env: dict[str, str] | None = None,
    policy: SandboxPolicy | None = None,
) -> AgentRun:
    """Run ``argv`` (never through a shell) in ``workdir`` under ``limits`` and wait for it.

    ``should_stop`` is called every ``poll_interval`` seconds (the pipeline refreshes its lease and reads the
    cancel flag there); returning True kills the agent's process group and reports ``cancelled``. ``policy``
    defaults to ``SandboxPolicy.from_env()``; ``sandbox.SandboxUnavailable`` means the agent was not started
    because that policy cannot be enforced here (fail closed).
    """
    policy = SandboxPolicy.from_env() if policy is None else policy
    policy.check_not_root()
    sandbox.protect_worker_process()  # whoever hosts us: the agent must not read our environ or escape our reaping
    run_id = secrets.token_hex(16)
    env = agent_environment(workdir, parent_env, run_id)
    sandbox.check_executable(argv[0], env["PATH"], policy.identity)
    sandbox.hand_over(workdir.root, workdir.agent_dirs, policy.identity)
    started = time.monotonic()
    with sandbox.spawning():  # no other run claims our child as an orphan before it is registered as ours
        proc = _spawn(argv, workdir, limits, policy, env)
        tracker = sandbox.RunTracker(proc.pid, run_id)
    assert proc.stdout is not None
    tail = _Tail(proc.stdout)
    log.info("agent.started", pid=proc.pid, program=Path(argv[0]).name, network=policy.network,
             user=policy.identity.name if policy.identity else None)  # fmt: skip

    def tick() -> bool:
        tracker.observe()
        return should_stop()

    try:
        outcome, usage = _watch(proc, workdir, limits, tick, poll_interval, started)
        kill_group(proc, grace=KILL_GRACE if outcome != "exited" else 0.0)
    finally:
        leftovers = tracker.kill_all(keep_waiting_for=[proc.pid])
    elapsed = time.monotonic() - started
    lines = tail.lines()
    exit_code = proc.returncode if outcome == "exited" else None
    log.info("agent.ended", outcome=outcome, exit_code=exit_code, seconds=round(elapsed, 3), leftovers=leftovers)
    return AgentRun(outcome, exit_code, elapsed, lines, final_report(lines), usage)


def _spawn(
    argv: list[str], workdir: Workdir, limits: Limits, policy: SandboxPolicy, env: dict[str, str]
) -> subprocess.Popen[bytes]:
    try:
        return subprocess.Popen(
            argv,
            cwd=workdir.root,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=sandbox.child_setup(policy, _rlimits(limits)),  # namespaces, identity, rlimits
            close_fds=True,
        )
    except subprocess.SubprocessError:  # only the preexec set-up raises this: the sandbox could not be entered
        reason = sandbox.probe(policy) or "the child could not enter the sandbox"
        variable = sandbox.AGENT_NETWORK_VAR if policy.network == "none" else sandbox.AGENT_USER_VAR
        log.error("agent.sandbox_refused", reason=reason, network=policy.network)
        raise sandbox.SandboxUnavailable(
            variable, f"cannot be enforced here ({reason}); the agent was not started"
        ) from None


def _watch(
    proc: subprocess.Popen[bytes],
    workdir: Workdir,
    limits: Limits,
    should_stop: Callable[[], bool],
    poll_interval: float,
    started: float,
) -> tuple[Outcome, int]:
    """The watchdog loop: returns why the agent stopped (or must be stopped) and the last disk usage seen."""
    usage = 0
    while True:
        try:
            proc.wait(timeout=poll_interval)
            return "exited", usage
        except subprocess.TimeoutExpired:
            pass
        usage = disk_usage(workdir.root)
        if usage > limits.max_disk_usage:
            return "disk", usage
        if time.monotonic() - started > limits.max_execution_time:
            return "timeout", usage
        if should_stop():
            return "cancelled", usage
