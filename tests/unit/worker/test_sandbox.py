"""Hostile agents against the real bwrap sandbox: each tries to do harm through ``run_agent`` and must fail.

Every test starts real processes (bwrap, the agent). The fork bomb runs under a stand-in worker started as
``nobody`` (tests/agents/host.py), where RLIMIT_NPROC applies as it does to the shipped non-root worker.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.errors import ConfigError
from shared.settings import Settings
from tests.agents.harness import AGENT, HOST, agent_mounts, agent_python
from worker_service.agents import sandbox, workdir
from worker_service.agents.outputs import LimitExceeded, collect_outputs
from worker_service.agents.runner import Limits, run_agent
from worker_service.agents.sandbox import SandboxPolicy, SandboxUnavailable
from worker_service.agents.workdir import Workdir, fresh_workdir

pytestmark = pytest.mark.unit

NOBODY = 65534
LIMITS = Limits(max_execution_time=20, max_disk_usage=8 << 20, max_artifact_count=5, max_artifact_size=4 << 20)
REPO = Path(__file__).resolve().parents[3]
MOUNTS = [Path(m) for m in agent_mounts()]


def misbehave(*args: str) -> list[str]:
    return [agent_python(), AGENT, *args]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture
def base() -> Iterator[Path]:
    """A work dir base any user can traverse (pytest's tmp_path is 0700 root)."""
    path = Path(tempfile.mkdtemp(prefix="sr-sandbox-"))
    os.chmod(path, 0o711)
    yield path
    subprocess.run(["rm", "-rf", str(path)], check=False)


@pytest.fixture
def wd(base: Path) -> Iterator[Workdir]:
    with fresh_workdir(base) as run_dir:
        yield run_dir


def run(wd: Workdir, *args: str, policy: SandboxPolicy | None = None, limits: Limits = LIMITS) -> Any:
    return run_agent(misbehave(*args), wd, limits, policy=policy, mounts=MOUNTS, poll_interval=0.1)


def out_json(wd: Workdir, name: str) -> Any:
    return json.loads((wd.out_dir / name).read_text())


# --- configuration ----------------------------------------------------------------------------------------------


def test_sandbox_is_the_default_and_none_is_refused_in_production() -> None:
    assert Settings.from_env({"REDIS_URL": "redis://127.0.0.1:1/0"}).agent_sandbox == "bwrap"
    with pytest.raises(ConfigError, match="STRONGROOM_AGENT_SANDBOX is 'none' but STRONGROOM_ENV=production"):
        Settings.from_env({"REDIS_URL": "redis://127.0.0.1:1/0", "STRONGROOM_AGENT_SANDBOX": "none"})
    dev = {"REDIS_URL": "redis://127.0.0.1:1/0", "STRONGROOM_ENV": "development", "STRONGROOM_AGENT_SANDBOX": "none"}
    assert SandboxPolicy.from_settings(Settings.from_env(dev)) == SandboxPolicy("none", "allowed")


def test_the_probe_succeeds_here() -> None:
    assert sandbox.probe(SandboxPolicy()) is None
    assert sandbox.probe(SandboxPolicy(network="none")) is None


def test_the_refusal_names_the_fix_for_what_bwrap_said() -> None:
    masked = sandbox.refusal(["bwrap: Can't mount proc on /newroot/proc: Operation not permitted"], SandboxPolicy())
    assert "procMount: Unmasked" in masked.detail and "user namespaces" not in masked.detail
    no_userns = sandbox.refusal(["bwrap: No permissions to create new namespace"], SandboxPolicy())
    assert "unprivileged user namespaces must be allowed" in no_userns.detail


def test_a_sandbox_bwrap_cannot_create_refuses_the_run(wd: Workdir, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail closed: bwrap's own reason, and the agent never ran (here: bwrap told to use a missing user ns fd)."""
    real = sandbox.bwrap_argv

    def broken(*args: Any, **kwargs: Any) -> list[str]:
        argv = real(*args, **kwargs)
        return [argv[0], "--userns", "999", *argv[2:]]  # replaces --unshare-user: no such descriptor

    monkeypatch.setattr(sandbox, "bwrap_argv", broken)
    marker = wd.out_dir / "started"
    with pytest.raises(SandboxUnavailable, match="bwrap could not create the sandbox"):
        run_agent(["/bin/sh", "-c", f"touch {marker}"], wd, LIMITS)
    assert not marker.exists()


def test_without_bwrap_the_run_is_refused(wd: Workdir, monkeypatch: pytest.MonkeyPatch) -> None:
    def missing() -> str:
        raise SandboxUnavailable(sandbox.SANDBOX_VAR, "is 'bwrap' but no bwrap was found")

    monkeypatch.setattr(sandbox, "find_bwrap", missing)
    with pytest.raises(SandboxUnavailable, match="no bwrap was found"):
        run_agent(["/bin/true"], wd, LIMITS)


def test_unsandboxed_runs_say_so_in_their_logs(wd: Workdir) -> None:
    result = run_agent(["/bin/sh", "-c", "echo hi"], wd, LIMITS, policy=SandboxPolicy("none"))
    assert result.exit_code == 0 and result.logs[0] == "hi"
    assert (
        result.logs[-1] == "warning: STRONGROOM_AGENT_SANDBOX=none: this agent ran without a sandbox (development only)"
    )


# --- what the agent can see -------------------------------------------------------------------------------------


def test_agent_cannot_read_secrets_other_runs_or_the_worker(wd: Workdir, base: Path) -> None:
    secrets_dir = Path(tempfile.mkdtemp(prefix="sr-secrets-"))
    keyring, credentials = secrets_dir / "keyring.json", secrets_dir / "s3-credentials"
    keyring.write_text("KEYRING-SECRET")
    credentials.write_text("AWS-SECRET")
    try:
        with fresh_workdir(base) as other:
            (other.in_dir / "theirs.txt").write_text("OTHER-RUN-INPUT")
            (other.out_dir / "theirs.txt").write_text("OTHER-RUN-OUTPUT")
            targets = [str(keyring), str(credentials), str(other.in_dir / "theirs.txt"), str(other.out_dir)]
            result = run(wd, "pry", *targets, f"/proc/{os.getpid()}/environ")
            assert (other.out_dir / "theirs.txt").read_text() == "OTHER-RUN-OUTPUT"
    finally:
        subprocess.run(["rm", "-rf", str(secrets_dir)], check=False)
    assert result.exit_code == 0, result.logs
    pried = out_json(wd, "pry.json")
    for path in targets:
        assert pried["read"][path] in ("FileNotFoundError", "IsADirectoryError"), path
    assert pried["read"][f"/proc/{os.getpid()}/environ"] == "FileNotFoundError"  # the worker is not in its /proc
    init_env = pried["read"]["/proc/1/environ"]  # pid 1 is bwrap's init, with the agent's own environment
    assert "STRONGROOM" not in init_env and "AWS_" not in init_env and "REDIS" not in init_env
    assert pried["pids"] == [1, 2]  # bwrap's init and the agent: nothing else exists for it
    for target in ("/pwned", "/usr/pwned", "/etc/pwned"):
        assert pried["writes"][target] == "OSError", pried["writes"]  # EROFS: a read-only root
    assert not (wd.root / "pwned").exists()  # the run directory itself is never the agent's to write
    assert not any(name.startswith(("STRONGROOM", "AWS", "REDIS")) for name in pried["env"])


def test_agent_cannot_signal_the_worker(wd: Workdir) -> None:
    result = run(wd, "signal", str(os.getpid()))
    assert result.exit_code == 0, result.logs
    assert out_json(wd, "signal.json") == {"outcome": "ProcessLookupError"}  # that pid is not in its namespace


def test_nothing_the_agent_leaves_running_survives(wd: Workdir) -> None:
    """setsid + double fork, with and without a clean exec: the PID namespace ends with the run."""
    for clean in ("", "clean"):
        pidfile = wd.tmp_dir / "escapee.pid"
        result = run(wd, "escape", str(pidfile), clean)
        assert result.exit_code == 0, result.logs
        survivors = subprocess.run(["pgrep", "-f", "sleep 600"], capture_output=True, text=True, check=False)
        mine = [pid for pid in survivors.stdout.split() if _in_dir(int(pid), wd.root)]
        assert mine == []


def _in_dir(pid: int, root: Path) -> bool:
    try:
        return os.readlink(f"/proc/{pid}/cwd").startswith(str(root))
    except OSError:
        return False


def test_an_agent_ignoring_sigterm_is_killed_with_everything_it_started(wd: Workdir) -> None:
    pidfile = wd.out_dir / "pids.json"
    limits = Limits(max_execution_time=1, max_disk_usage=8 << 20, max_artifact_count=5, max_artifact_size=1 << 20)
    result = run(wd, "stubborn", str(pidfile), limits=limits)
    assert result.outcome == "timeout"
    assert subprocess.run(["pgrep", "-f", "time.sleep\\(600\\)"], capture_output=True, check=False).returncode == 1


# A worker stopped from a terminal (Ctrl-C) or by a supervisor that signals its whole process group, as
# `strongroom dev` and systemd do: the signal is for the worker (a warm shutdown lets running tasks finish), so
# it must not reach bwrap and end the run as "sandbox unavailable".
GROUP_SIGNALLED_WORKER = """
import json, signal, sys
from pathlib import Path
from worker_service.agents.runner import Limits, run_agent
from worker_service.agents.workdir import Workdir
signal.signal(signal.SIGTERM, lambda *_: None)  # Celery's warm shutdown: keep running the task
limits = Limits(max_execution_time=30, max_disk_usage=8 << 20, max_artifact_count=5, max_artifact_size=1 << 20)
agent, root, mounts = json.loads(sys.argv[1])
result = run_agent(agent, Workdir(Path(root)), limits, mounts=[Path(m) for m in mounts], poll_interval=0.1)
print(json.dumps({"outcome": result.outcome, "exit_code": result.exit_code}), flush=True)
"""


def test_a_signal_to_the_workers_process_group_does_not_reach_the_sandbox(wd: Workdir) -> None:
    argv = json.dumps([misbehave("slow", "2"), str(wd.root), [str(m) for m in MOUNTS]])
    worker = subprocess.Popen(
        [sys.executable, "-c", GROUP_SIGNALLED_WORKER, argv],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not _agent_running(wd.root) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _agent_running(wd.root), "the agent never started"
        os.killpg(worker.pid, signal.SIGTERM)
        out, err = worker.communicate(timeout=60)
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
    assert json.loads(out.splitlines()[-1]) == {"outcome": "exited", "exit_code": 0}, err[-2000:]
    assert (wd.out_dir / "late.txt").read_bytes() == b"xxxxx"  # the agent finished its work


def _agent_running(root: Path) -> bool:
    found = subprocess.run(["pgrep", "-f", "misbehave.py slow 2"], capture_output=True, text=True, check=False)
    return any(_in_dir(int(pid), root) for pid in found.stdout.split())


# --- out/: links and the disk limit -----------------------------------------------------------------------------


def test_the_keyring_cannot_be_linked_into_out(wd: Workdir, tmp_path: Path) -> None:
    keyring = tmp_path / "keyring.json"
    keyring.write_text("KEYRING-SECRET")
    result = run(wd, "link", str(keyring))
    assert result.exit_code == 0
    assert "hard link refused: FileNotFoundError" in result.logs
    assert not (wd.out_dir / "hard.txt").exists()
    assert (wd.out_dir / "sym.txt").is_symlink()  # a symlink may name it, but out/ is read without following links
    with pytest.raises(LimitExceeded, match="symlink"):
        collect_outputs(wd.out_dir, LIMITS)


def test_a_hard_link_in_out_is_never_published(wd: Workdir) -> None:
    """What the unsandboxed mode (or a link between two outputs) could produce: refused, whatever it points to."""
    (wd.out_dir / "a.txt").write_text("x")
    os.link(wd.out_dir / "a.txt", wd.out_dir / "b.txt")
    with pytest.raises(LimitExceeded, match="hard links") as refused:
        collect_outputs(wd.out_dir, LIMITS)
    assert refused.value.code == "artifact_link"


def test_scratch_is_bounded_by_the_kernel(wd: Workdir) -> None:
    result = run(wd, "disk", str(64 << 20))  # 20 MiB/s into tmp/, against an 8 MiB limit
    assert result.outcome in ("disk", "exited")
    assert result.outcome == "disk" or result.exit_code != 0  # ENOSPC at the limit at the latest
    assert result.disk_usage <= LIMITS.max_disk_usage + (1 << 20)


def test_writing_twice_the_limit_into_out_and_exiting_fails(wd: Workdir) -> None:
    """Issue 10 item 3: fast writes then exit used to end ``succeeded``; the check after exit catches them. The
    watchdog's interval is longer than the run, so it never looks while the agent writes: only the check after
    exit can see the excess."""
    argv = misbehave("outfill", str(2 * LIMITS.max_disk_usage))
    result = run_agent(argv, wd, LIMITS, policy=SandboxPolicy(), mounts=MOUNTS, poll_interval=LIMITS.max_execution_time)
    assert result.outcome == "disk"
    assert result.disk_usage > LIMITS.max_disk_usage


def test_network_none_cannot_reach_the_hosts_loopback(wd: Workdir) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        port = server.getsockname()[1]
        result = run(wd, "connect", str(port), policy=SandboxPolicy(network="none"))
        assert out_json(wd, "connect.json") == {"connected": False, "error": "ConnectionRefusedError"}
        allowed = run(wd, "connect", str(port), policy=SandboxPolicy(network="allowed"))
    assert result.exit_code == 0 and allowed.exit_code == 0
    assert out_json(wd, "connect.json") == {"connected": True}


def test_concurrent_runs_are_independent(base: Path) -> None:
    with fresh_workdir(base) as slow_wd, fresh_workdir(base) as quick_wd:
        results: dict[str, Any] = {}
        slow = threading.Thread(target=lambda: results.update(slow=run(slow_wd, "slow", "1")))
        slow.start()
        results["quick"] = run(quick_wd, "files", "1")
        slow.join()
    assert results["quick"].exit_code == 0
    assert results["slow"].exit_code == 0


# --- a non-root worker: the fork bomb --------------------------------------------------------------------------


@pytest.mark.skipif(os.geteuid() != 0, reason="starts the stand-in worker as nobody")
def test_a_fork_bomb_is_bounded_and_ends_with_the_run(base: Path) -> None:
    site = next(Path(REPO, ".venv", "lib").glob("python3*/site-packages"))
    os.chown(base, NOBODY, NOBODY)
    spec = {"argv": misbehave("forkbomb", "5000"), "base": str(base), "mounts": agent_mounts()}
    done = subprocess.run(
        ["/usr/bin/python3", HOST, json.dumps(spec)],
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{REPO}:{site}"},
        user=NOBODY,
        group=NOBODY,
        extra_groups=[],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    forked = json.loads(result["outputs"]["forkbomb.json"])["forked"]
    assert forked < 1024  # RLIMIT_NPROC
    assert any("fork refused" in line for line in result["logs"])
    leftovers = subprocess.run(["pgrep", "-u", str(NOBODY), "-f", "misbehave.py"], capture_output=True, check=False)
    assert leftovers.returncode == 1  # none of them survived the run


# --- stale run directories --------------------------------------------------------------------------------------


def test_sweep_removes_dead_runs_directories_and_spares_live_ones(base: Path) -> None:
    dead = base / "strongroom-agent-dead"
    (dead / "out").mkdir(parents=True)
    (dead / "out" / "plain.txt").write_text("plaintext")
    unrelated = base / "keep-me"
    unrelated.mkdir()
    with fresh_workdir(base) as live:
        assert workdir.sweep_stale(base) == 1
        assert live.root.exists()
    assert not dead.exists() and unrelated.exists()


def test_the_periodic_sweeper_removes_a_directory_left_after_start(base: Path) -> None:
    """Issue 10 item 4, "and periodically": a run directory that went stale while the worker runs is removed too."""
    stop = workdir.start_sweeper(base, interval=0.05)
    try:
        dead = base / "strongroom-agent-late"
        (dead / "out").mkdir(parents=True)
        deadline = time.monotonic() + 30
        while dead.exists():
            assert time.monotonic() < deadline, "the sweeper never removed it"
            time.sleep(0.05)
    finally:
        stop.set()


def test_an_agent_installed_under_the_host_tmp_still_runs(wd: Workdir, base: Path) -> None:
    """A regression: the scratch tmpfs at /tmp was mounted over the agent's own installation when that lived under
    the host's /tmp (a checkout cloned there), so the program vanished inside the sandbox."""
    install = Path(tempfile.mkdtemp(prefix="sr-agent-install-", dir="/tmp"))
    try:
        os.chmod(install, 0o755)
        program = install / "hello.py"
        program.write_text("open('out/hello.txt', 'w').write('hi')\n")
        os.chmod(program, 0o644)
        result = run_agent([agent_python(), str(program)], wd, LIMITS, mounts=[*MOUNTS, install], poll_interval=0.1)
        assert result.exit_code == 0, result.logs
        assert (wd.out_dir / "hello.txt").read_text() == "hi"
    finally:
        subprocess.run(["rm", "-rf", str(install)], check=False)
