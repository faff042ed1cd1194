"""The agent sandbox against real processes: what an escaping or prying agent can still do after run_agent.

These run as root here (the CI container); the same-UID case is reproduced by starting a stand-in worker
(tests/agents/host.py) as ``nobody``, whose agent then also runs as ``nobody``.
"""

from __future__ import annotations

import json
import os
import pwd
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.errors import ConfigError
from shared.settings import Settings
from tests.agents.harness import AGENT, HOST, agent_python
from worker_service.agents import sandbox
from worker_service.agents.runner import Limits, Workdir, fresh_workdir, run_agent
from worker_service.agents.sandbox import AgentIdentity, SandboxPolicy, SandboxUnavailable

pytestmark = pytest.mark.unit

ROOT = os.geteuid() == 0
NOBODY = 65534
LIMITS = Limits(max_execution_time=20, max_disk_usage=50 << 20, max_artifact_count=5, max_artifact_size=1 << 20)
REPO = Path(__file__).resolve().parents[3]
needs_root = pytest.mark.skipif(not ROOT, reason="switching users and namespaces needs root here")


NOBODY_ENV = {"STRONGROOM_AGENT_USER": "nobody"}
AGENT_ENV = NOBODY_ENV if ROOT else {}  # the strongest policy this test process can ask for


def pwd_gid(uid: int) -> int:
    return pwd.getpwuid(uid).pw_gid


def misbehave(*args: str) -> list[str]:
    return [agent_python(), AGENT, *args]


def alive(pid: int) -> bool:
    """Alive and not a zombie: a zombie is dead even though kill(pid, 0) still succeeds."""
    info = sandbox.read_proc(pid)
    return info is not None and info.state != "Z"


@pytest.fixture
def shared_base() -> Iterator[Path]:
    """A work dir base any user can traverse (pytest's tmp_path is 0700 root)."""
    base = Path(tempfile.mkdtemp(prefix="sr-sandbox-"))
    os.chmod(base, 0o711)  # traverse-only, like a production work dir
    yield base
    subprocess.run(["rm", "-rf", str(base)], check=False)


@pytest.fixture
def workdir(shared_base: Path) -> Iterator[Workdir]:
    with fresh_workdir(shared_base) as wd:
        yield wd


def host(spec: dict[str, Any], *, user: int | None = None, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run tests/agents/host.py (a stand-in worker) with the system interpreter, optionally as ``user``."""
    site = next(Path(REPO, ".venv", "lib").glob("python3*/site-packages"))
    environ = {"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{REPO}:{site}", **(env or {})}
    done = subprocess.run(
        [agent_python(), HOST, json.dumps(spec)],
        env=environ,
        user=user,
        group=user,
        extra_groups=[] if user is not None else None,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# --- policy ----------------------------------------------------------------------------------------------------------


def test_policy_defaults_follow_the_worker_uid() -> None:
    policy = SandboxPolicy.from_env({})
    assert policy.network == "allowed"
    if ROOT:  # always the separate user, whether or not it can run this worker's Python (checked per run)
        assert policy.identity == AgentIdentity(NOBODY, pwd_gid(NOBODY), "nobody")
    else:
        assert policy.identity is None and policy.as_worker


def test_policy_parses_and_refuses() -> None:
    assert SandboxPolicy.from_env({"STRONGROOM_AGENT_NETWORK": "none"}).network == "none"
    with pytest.raises(ConfigError, match="STRONGROOM_AGENT_USER is empty"):
        SandboxPolicy.from_env({"STRONGROOM_AGENT_USER": " "})
    with pytest.raises(ConfigError, match="STRONGROOM_AGENT_NETWORK must be"):
        SandboxPolicy.from_env({"STRONGROOM_AGENT_NETWORK": "off"})
    with pytest.raises(ConfigError, match="STRONGROOM_AGENT_USER names an unknown user"):
        SandboxPolicy.from_env({"STRONGROOM_AGENT_USER": "no-such-user-here"})
    with pytest.raises(ConfigError, match="must not be root"):
        SandboxPolicy.from_env({"STRONGROOM_AGENT_USER": "0"})


def test_empty_agent_user_is_a_settings_error() -> None:
    """Empty is refused, not read as "the worker's user": a blanked variable must not give agents root."""
    with pytest.raises(ConfigError, match="STRONGROOM_AGENT_USER must be one of auto, self"):
        Settings.from_env({"REDIS_URL": "redis://127.0.0.1:1/0", "STRONGROOM_AGENT_USER": ""})
    assert Settings.from_env({"REDIS_URL": "redis://127.0.0.1:1/0"}).agent_user == "auto"


def test_self_is_the_explicit_opt_in_to_the_workers_user() -> None:
    policy = SandboxPolicy.from_env({"STRONGROOM_AGENT_USER": "self"})
    assert policy.identity is None and policy.as_worker


# --- fail closed: a root worker never runs agents as root implicitly (review 2, finding 2) ---------------------------


@needs_root
def test_default_user_that_cannot_run_the_program_refuses_instead_of_running_as_root(
    shared_base: Path, tmp_path: Path
) -> None:
    """The old default fell back to the worker's UID (root) when ``nobody`` could not reach the program."""
    program = tmp_path / "agent.sh"  # pytest's 0700 tmp dir: nobody cannot traverse it
    marker = tmp_path / "ran-as-root"
    program.write_text(f"#!/bin/sh\ntouch {marker}\n")
    program.chmod(0o755)
    policy = SandboxPolicy.from_env({})
    with fresh_workdir(shared_base, policy) as wd, pytest.raises(SandboxUnavailable) as refused:
        run_agent([str(program)], wd, LIMITS, policy=policy)
    assert not marker.exists()
    detail = refused.value.detail
    assert detail.startswith("STRONGROOM_AGENT_USER runs agents as 'nobody'") and "'self'" in detail


@needs_root
def test_a_policy_without_a_user_is_refused_on_a_root_worker(workdir: Workdir) -> None:
    marker = workdir.tmp_dir / "started"
    for policy in (SandboxPolicy(), SandboxPolicy(identity=None, network="allowed", as_worker=False)):
        with pytest.raises(SandboxUnavailable, match="agents are never run as root implicitly"):
            run_agent(["/bin/sh", "-c", f"touch {marker}"], workdir, LIMITS, policy=policy)
    assert not marker.exists()
    run = run_agent(["/bin/sh", "-c", "id -u"], workdir, LIMITS, policy=SandboxPolicy(as_worker=True))
    assert run.exit_code == 0 and run.logs == ["0"]  # ``self``: root, because the operator said so


def test_worker_start_names_what_to_set_when_the_builtin_agent_cannot_run() -> None:
    from worker_service import celery_app

    settings = Settings.from_env({"REDIS_URL": "redis://127.0.0.1:1/0", "STRONGROOM_AGENT_USER": "self"})
    assert celery_app._sandbox_problem(settings) is None
    nobody = AgentIdentity(NOBODY, pwd_gid(NOBODY), "nobody")
    if ROOT and not nobody.can_reach(Path(sys.executable)):
        problem = celery_app._sandbox_problem(Settings.from_env({"REDIS_URL": "redis://127.0.0.1:1/0"}))
        assert problem is not None and "STRONGROOM_AGENT_USER" in problem and "'self'" in problem


@needs_root
def test_policy_numeric_user_and_group() -> None:
    identity = SandboxPolicy.from_env({"STRONGROOM_AGENT_USER": "65534:65533"}).identity
    assert identity == AgentIdentity(NOBODY, 65533, "nobody")


# --- the worker process: non-dumpable ---------------------------------------------------------------------------------


def test_protect_worker_process_marks_it_non_dumpable() -> None:
    code = (
        "from worker_service.agents import sandbox; assert sandbox.protect_worker_process(); print(sandbox.dumpable())"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert done.stdout.strip() == "0"


@needs_root
def test_same_uid_agent_cannot_read_the_workers_environ(tmp_path: Path) -> None:
    """The worker (host.py) and its agent share the UID ``nobody``; the worker's environ holds a secret."""
    base = Path(tempfile.mkdtemp(prefix="sr-nobody-"))
    os.chown(base, NOBODY, NOBODY)
    try:
        result = host(
            {"argv": misbehave("peek"), "base": str(base)},
            user=NOBODY,
            env={"STRONGROOM_KEYRING": "not-for-agents"},
        )
    finally:
        subprocess.run(["rm", "-rf", str(base)], check=False)
    peek = json.loads(result["outputs"]["peek.json"])
    assert peek == {"read": False, "error": "PermissionError"}


# --- separate UID -----------------------------------------------------------------------------------------------------


@needs_root
def test_agent_runs_as_the_agent_user_with_nproc_limit(workdir: Workdir) -> None:
    run = run_agent(misbehave("whoami"), workdir, LIMITS, policy=SandboxPolicy.from_env(NOBODY_ENV))
    assert run.exit_code == 0, run.logs
    facts = json.loads((workdir.out_dir / "whoami.json").read_text())
    assert facts["uid"] == NOBODY and facts["out_uid"] == NOBODY
    assert facts["workdir_uid"] == 0  # the run directory stays the worker's: out/ cannot be swapped
    assert facts["groups"] in ([], [facts["gid"]])  # no supplementary groups of the worker
    assert facts["nproc"] == sandbox.AGENT_MAX_PROCESSES


@needs_root
def test_work_dir_the_agent_user_cannot_reach_moves_to_a_reachable_one(tmp_path: Path) -> None:
    hidden = tmp_path / "private"  # under pytest's 0700 directory
    policy = SandboxPolicy.from_env(NOBODY_ENV)
    with fresh_workdir(hidden, policy) as wd:
        assert not str(wd.root).startswith(str(hidden))
        assert policy.identity is not None and policy.identity.can_reach(wd.root)


@needs_root
def test_unreachable_program_is_refused_with_a_reason(workdir: Workdir, tmp_path: Path) -> None:
    program = tmp_path / "agent.sh"  # 0700 parents: nobody cannot exec it
    program.write_text("#!/bin/sh\nexit 0\n")
    program.chmod(0o755)
    with pytest.raises(SandboxUnavailable, match="cannot reach the agent program"):
        run_agent([str(program)], workdir, LIMITS, policy=SandboxPolicy.from_env(NOBODY_ENV))


# --- descendants that leave the process group -----------------------------------------------------------------------


def test_setsid_grandchild_is_killed_when_the_run_ends(workdir: Workdir) -> None:
    pidfile = workdir.tmp_dir / "escapee.pid"  # tmp/ is the agent's to write
    run = run_agent(misbehave("escape", str(pidfile)), workdir, LIMITS)
    assert run.exit_code == 0, run.logs
    pid = int(pidfile.read_text())
    assert not alive(pid)


def test_clean_environment_escapee_is_killed_by_an_agent_host(shared_base: Path) -> None:
    """setsid + exec with an empty environment, finished before the watchdog's first look (its interval is longer
    than the agent's life): no mark attributes the escapee to the run; the agent host's orphan rule kills it."""
    probe_dir = Path(tempfile.mkdtemp(prefix="sr-pid-", dir=shared_base))
    os.chmod(probe_dir, 0o777)  # the agent (maybe nobody) writes its pid here
    pidfile = probe_dir / "escapee.pid"
    spec = {"argv": misbehave("escape", str(pidfile), "clean"), "base": str(shared_base), "poll_interval": 30}
    result = host({**spec, "claim_orphans": True})
    assert result["exit_code"] == 0
    assert not alive(int(pidfile.read_text()))


def test_concurrent_runs_do_not_kill_each_other(shared_base: Path, tmp_path: Path) -> None:
    """Run A's cleanup must spare run B's agent, even in an agent host that claims orphans."""
    import threading

    sandbox.protect_worker_process()
    with fresh_workdir(shared_base) as slow_wd, fresh_workdir(shared_base) as quick_wd:
        results: dict[str, Any] = {}
        slow = threading.Thread(
            target=lambda: results.update(slow=run_agent(misbehave("slow", "2"), slow_wd, LIMITS, poll_interval=0.1))
        )
        slow.start()
        results["quick"] = run_agent(misbehave("files", "1"), quick_wd, LIMITS, poll_interval=0.1)
        slow.join()
        assert results["quick"].exit_code == 0
        assert results["slow"].exit_code == 0 and (slow_wd.out_dir / "late.txt").exists()


# --- network ----------------------------------------------------------------------------------------------------------


@pytest.fixture
def listener() -> Iterator[int]:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        yield server.getsockname()[1]


def test_network_allowed_by_default(workdir: Workdir, listener: int) -> None:
    run = run_agent(misbehave("connect", str(listener)), workdir, LIMITS, policy=SandboxPolicy.from_env(AGENT_ENV))
    assert run.exit_code == 0, run.logs
    assert json.loads((workdir.out_dir / "connect.json").read_text()) == {"connected": True}


def test_network_none_cannot_reach_the_hosts_loopback(workdir: Workdir, listener: int) -> None:
    policy = SandboxPolicy.from_env({**AGENT_ENV, "STRONGROOM_AGENT_NETWORK": "none"})
    if sandbox.probe(policy) is not None:
        pytest.skip("no network namespaces on this machine")
    run = run_agent(misbehave("connect", str(listener)), workdir, LIMITS, policy=policy)
    assert run.exit_code == 0, run.logs
    outcome = json.loads((workdir.out_dir / "connect.json").read_text())
    assert outcome == {"connected": False, "error": "ConnectionRefusedError"}  # its own loopback is up, but empty


def test_network_none_unavailable_refuses_to_start_the_agent(workdir: Workdir, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_namespaces(flags: int) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(sandbox, "_unshare", no_namespaces)
    marker = workdir.root / "started"
    policy = SandboxPolicy(identity=None, network="none", as_worker=True)
    with pytest.raises(SandboxUnavailable, match="STRONGROOM_AGENT_NETWORK cannot be enforced here"):
        run_agent(["/bin/sh", "-c", f"touch {marker}"], workdir, LIMITS, policy=policy)
    assert not marker.exists()


def test_celery_worker_start_protects_the_worker_process() -> None:
    """The worker_init handler is what makes a real worker non-dumpable and an orphan-claiming subreaper."""
    code = (
        "from worker_service import celery_app; from worker_service.agents import sandbox; "
        "celery_app._protect_worker(); print(sandbox.dumpable(), sandbox._claims_orphans)"
    )
    env = {**os.environ, "STRONGROOM_AGENT_USER": "self", "STRONGROOM_AGENT_NETWORK": "allowed"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO, env=env)
    assert done.stdout.split()[-2:] == ["0", "True"]
